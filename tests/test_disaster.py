"""Losing the database host: recovery from the object store alone.

A real embedded database with generated clips archives its WAL to the S3 server continuously;
markers are committed over time; then the server is killed and its data directory (and its WAL
with it) deleted. Everything after that uses only the settings: the catalogue from the store,
recovery to the latest point as the new embedded database (doctor and db status run against
it), recovery of a copy to a given moment, and a corrupted WAL segment or base backup in the
store named in one line, with no server started on wrong data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio import Minio
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from stave.infra.embedded_pg import bin_dir
from tests.test_cli import assert_one_line_error, stave

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARCHIVE_TIMEOUT_S = 2  # the production default is 60; the bound checked below is the setting


def _markers(url: str, until: float, every: float = 0.1) -> list[tuple[int, datetime]]:
    """Commit a marker row every `every` seconds until `until` (monotonic); each one's commit
    time as the client saw the commit return."""
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    committed = []
    with engine.connect() as conn:
        n = conn.execute(text("SELECT coalesce(max(n), 0) FROM drill_marker")).scalar_one()
        while time.monotonic() < until:
            n += 1
            conn.execute(text("INSERT INTO drill_marker (n) VALUES (:n)"), {"n": n})
            committed.append((n, datetime.now(UTC)))
            time.sleep(every)
    engine.dispose()
    return committed


def _recovered_markers(url: str) -> list[int]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT n FROM drill_marker ORDER BY n")).scalars().all()
    engine.dispose()
    return list(rows)


def _pg_stop(data_dir: Path) -> None:
    runner = ["runuser", "-u", "pgserver", "--"] if os.geteuid() == 0 else []
    subprocess_run([*runner, str(bin_dir() / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "stop"])


def subprocess_run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=False, capture_output=True, timeout=60)


def test_recovery_from_the_store_alone_after_losing_the_database_host(
    tmp_path: Path, s3_endpoint: str, bucket_name: str
) -> None:
    home = tmp_path / "home"
    env = {
        "STAVE_HOME": str(home),
        "STAVE_S3_ENDPOINT": s3_endpoint,
        "STAVE_S3_ACCESS_KEY": "test-access",
        "STAVE_S3_SECRET_KEY": "test-secret",
        "STAVE_BUCKET": bucket_name,
        "STAVE_WAL_ARCHIVE_TIMEOUT_S": str(ARCHIVE_TIMEOUT_S),
        "STAVE_PUBLISH_PAGES": "false",
    }
    data_dir = home / "dev" / "data" / "pg"
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "prompt,duration_s,steps,seed\n"
        '"bright bell arpeggio in D minor, 96 bpm",1,2,1\n'
        '"warm organ chords in F major, 72 bpm",1,2,2\n'
    )
    try:
        made = stave("generate", str(prompts), "--json", cwd=tmp_path, env=env)
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["published"] == 2
        port = json.loads((data_dir.parent / "pg.json").read_text())["port"]
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/stave"
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE drill_marker (n int PRIMARY KEY, "
                    "at timestamptz NOT NULL DEFAULT clock_timestamp())"
                )
            )
        engine.dispose()
        base = stave("backup", "base", "--json", cwd=tmp_path, env=env)
        assert base.returncode == 0, base.stderr
        base_id = json.loads(base.stdout)["backup_id"]
        dumped = stave("backup", "run", "--no-drill", "--json", cwd=tmp_path, env=env)
        assert dumped.returncode == 0, dumped.stderr
        dump_id = json.loads(dumped.stdout)["id"]

        first = _markers(url, time.monotonic() + 3 * ARCHIVE_TIMEOUT_S)
        time.sleep(0.3)
        moment = datetime.now(UTC)  # the given timestamp (b) recovers to
        time.sleep(0.3)
        second = _markers(url, time.monotonic() + 4 * ARCHIVE_TIMEOUT_S)

        # The host is lost: the server dies at once, its data directory and WAL with it.
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        lost_at = datetime.now(UTC)
        time.sleep(0.5)
        shutil.rmtree(data_dir)

        listed = stave("backup", "list", "--json", cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        catalogue = json.loads(listed.stdout)
        assert base_id in [b["id"] for b in catalogue["backups"] if b["kind"] == "base"]
        assert catalogue["wal"] and catalogue["wal"][0]["files"] >= 2

        # (a) The latest point, as the new embedded database.
        latest = stave(
            "backup", "pitr", "--latest", "--as-embedded", "--json", cwd=tmp_path, env=env
        )
        assert latest.returncode == 0, latest.stderr
        recovered_url = json.loads(latest.stdout)["url"]
        got = set(_recovered_markers(recovered_url))
        bound = lost_at - timedelta(seconds=ARCHIVE_TIMEOUT_S + 1)
        must = {n for n, at in first + second if at <= bound}
        assert must and must <= got, sorted(must - got)[:5]
        assert got <= {n for n, _ in first + second}
        doctor = stave("doctor", cwd=tmp_path, env=env)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        db_status = stave("db", "status", "--json", cwd=tmp_path, env=env)
        assert db_status.returncode == 0, db_status.stderr
        report = json.loads(db_status.stdout)
        assert report["up_to_date"] and report["tables"]["audio_asset"] == 2

        # The recovered database is the new primary: it archives again from its first minute
        # (on a new timeline), so losing it too loses no more than the first time.
        third = _markers(recovered_url, time.monotonic() + 3 * ARCHIVE_TIMEOUT_S)
        time.sleep(ARCHIVE_TIMEOUT_S + 1)
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        shutil.rmtree(data_dir)
        again = stave(
            "backup", "pitr", "--latest", "--as-embedded", "--json", cwd=tmp_path, env=env
        )
        assert again.returncode == 0, again.stderr
        assert {n for n, _ in third} <= set(_recovered_markers(json.loads(again.stdout)["url"]))

        # (b) A given moment, into a new directory: every marker before it, none after.
        to = stave(
            "backup", "pitr", "--to", moment.isoformat(), "--into", str(tmp_path / "b"),
            "--json", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert to.returncode == 0, to.stderr
        try:
            at_moment = _recovered_markers(json.loads(to.stdout)["url"])
        finally:
            _pg_stop(tmp_path / "b" / "data")
        assert at_moment == [n for n, at in first] or at_moment == sorted(
            n for n, at in first + second if at <= moment
        )
        assert max(at_moment) == max(n for n, _ in first)

        # (c) "Now", as an operator types it the day the host died: after the archive's last
        # commit. Recovered to the end of the archive, saying so and where it got to.
        now = stave(
            "backup", "pitr", "--to", datetime.now(UTC).isoformat(), "--into",
            str(tmp_path / "d"), "--json", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert now.returncode == 0, now.stderr
        try:
            told = json.loads(now.stdout)
            assert "the archive ends before" in told["short_of_target"], told
            assert told["reached_at"] is not None
            assert {n for n, _ in third} <= set(_recovered_markers(told["url"]))
        finally:
            _pg_stop(tmp_path / "d" / "data")
        # (d) Before the oldest base backup: refused, with the oldest time that can be reached.
        early = stave(
            "backup", "pitr", "--to", (lost_at - timedelta(days=1)).isoformat(), "--into",
            str(tmp_path / "e"), cwd=tmp_path, env=env,
        )  # fmt: skip
        assert early.returncode == 1
        line = assert_one_line_error(early)
        assert "before the oldest point that can be recovered" in line and base_id in line
        assert not (tmp_path / "e" / "data").exists()

        # Corruption in the store is named in one line and nothing is served.
        client = Minio(s3_endpoint, "test-access", "test-secret", secure=False)
        base_entry = next(b for b in catalogue["backups"] if b["id"] == base_id)
        segment = (
            f"dev/backups/wal/{base_entry['system_identifier']}/"
            f"{base_entry['start_wal'].lower()}.zz"
        )
        held = client.stat_object(bucket_name, segment)
        meta = {k[len("x-amz-meta-"):]: v for k, v in held.metadata.items()
                if k.lower().startswith("x-amz-meta-")}  # fmt: skip
        import io

        client.put_object(bucket_name, segment, io.BytesIO(b"rot" * 100), 300, metadata=meta)
        broken = stave(
            "backup", "pitr", "--latest", "--into", str(tmp_path / "c"), cwd=tmp_path, env=env
        )
        assert broken.returncode == 1
        line = assert_one_line_error(broken)
        assert segment in line and "corrupt" in line
        assert not (tmp_path / "c" / "data" / "postmaster.pid").exists()
        checked = stave("backup", "verify", base_id, cwd=tmp_path, env=env)
        assert segment in assert_one_line_error(checked)

        # The dump, too, is found from the store alone: lose the host once more and restore it
        # into the new, empty server the next command starts.
        stave("db", "stop", cwd=tmp_path, env=env)
        shutil.rmtree(data_dir)
        restored = stave(
            "backup", "restore", dump_id, "--into", "stave_from_dump", "--json",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["rows"]["public.audio_asset"] == 2

        # A backup whose manifest rotted is named as corrupted, not as missing.
        dump_entry = next(b for b in catalogue["backups"] if b["id"] == dump_id)
        manifest = f"{dump_entry['object_key']}.manifest.json"
        client.put_object(bucket_name, manifest, io.BytesIO(b"{not json"), 9)
        by_id = stave("backup", "restore", dump_id, "--into", "x_db", cwd=tmp_path, env=env)
        line = assert_one_line_error(by_id)
        assert f"backup {dump_id} cannot be used" in line and manifest in line, line
        newest = stave("backup", "verify", "--store-only", cwd=tmp_path, env=env)
        line = assert_one_line_error(newest)
        assert "no readable dump backup" in line and "corrupted" in line, line
    finally:
        stave("db", "stop", cwd=tmp_path, env=env)
