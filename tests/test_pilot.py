"""Moving a pilot into production as docs/production.md says: a machine that ran on the embedded
default (its own PostgreSQL, a filesystem store) carried into an external database and an S3
bucket of another environment, with `stave store copy` and `stave backup restore`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from stave.infra import migrate
from stave.infra.db import ensure_database, psycopg_dsn
from stave.infra.embedded_pg import RunningServer
from stave.infra.errors import ObjectCorrupted
from stave.infra.objectstore.filesystem import FilesystemStore
from stave.infra.objectstore.minio_store import MinioStore
from stave.tasks import pilot
from tests.test_cli import assert_one_line_error, stave

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _json(result: object) -> dict:  # type: ignore[type-arg]
    assert result.returncode == 0, result.stdout + result.stderr  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.timeout(420)
def test_a_pilot_moves_into_production_with_its_clips_and_records(
    tmp_path: Path, pg_server: RunningServer, database_url: str, s3_endpoint: str
) -> None:
    pilot_home = tmp_path / "pilot"
    pilot_env = {"STAVE_HOME": str(pilot_home), "STAVE_PUBLISH_PAGES": "false"}
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "prompt,duration_s,steps,seed\n"
        '"bright bell arpeggio in D minor, 96 bpm",1,2,1\n'
        '"warm organ chords in F major, 72 bpm",1,2,2\n'
    )
    try:
        made = _json(stave("generate", str(prompts), "--json", cwd=tmp_path, env=pilot_env))
        assert made["published"] == 2
        dump = _json(stave("backup", "run", "--no-drill", "--json", cwd=tmp_path, env=pilot_env))
    finally:
        stave("db", "stop", cwd=tmp_path, env=pilot_env)

    # Production: another environment, an empty database a DBA made, an S3 bucket.
    name = f"prod_{uuid.uuid4().hex[:8]}"
    ensure_database(pg_server.url("postgres"), name)
    bucket = f"prod-{uuid.uuid4().hex[:8]}"
    prod = {
        "STAVE_HOME": str(tmp_path / "prod-home"),
        "STAVE_ENV": "prod",
        # Loopback test servers: no TLS, no passwords; everything else as production.
        "STAVE_REQUIRE_EXTERNAL_SERVICES": "false",
        "STAVE_S3_SECURE": "false",
        "STAVE_DATABASE_URL": pg_server.url(name),
        "STAVE_S3_ENDPOINT": s3_endpoint,
        "STAVE_S3_ACCESS_KEY": "test-access",
        "STAVE_S3_SECRET_KEY": "test-secret",
        "STAVE_BUCKET": bucket,
    }
    copy = ["store", "copy", "--from-home", str(pilot_home), "--json"]
    first = _json(stave(*copy, cwd=tmp_path, env=prod))
    assert first["objects"] >= 3 and first["already"] == 0 and first["repointed"] is False
    assert first["left_behind"] >= 1  # the pilot server's WAL: never beside production's own

    listed = _json(stave("backup", "list", "--json", cwd=tmp_path, env=prod))
    ids = [b["id"] for b in listed["backups"]]
    assert dump["id"] in ids and all(b["kind"] == "dump" for b in listed["backups"])
    restored = stave("backup", "restore", dump["id"], "--into", name, cwd=tmp_path, env=prod)
    assert restored.returncode == 0, restored.stderr
    upgraded = stave("db", "upgrade", cwd=tmp_path, env=prod)
    assert upgraded.returncode == 0, upgraded.stderr

    again = _json(stave(*copy, cwd=tmp_path, env=prod))
    assert (again["objects"], again["already"]) == (0, first["objects"])
    assert again["repointed"] is True and again["rows"] >= 3  # two clips and the dump's record

    store = MinioStore(
        endpoint=s3_endpoint,
        access_key="test-access",
        secret_key="test-secret",
        bucket=bucket,
        secure=False,
    )
    with psycopg.connect(psycopg_dsn(pg_server.url(name))) as conn:
        assets = conn.execute("SELECT object_key, sha256 FROM audio_asset").fetchall()
    assert len(assets) == 2
    for key, sha256 in assets:
        assert key.startswith("prod/audio/"), key
        store.verify(key, expected_sha256=sha256)
    # The restored clips are production's now: one regenerates byte for byte from its record.
    task = _json(stave("job", made["job_id"], "--json", cwd=tmp_path, env=prod))["tasks"][0]
    verified = stave("regenerate", task["id"], "--verify", cwd=tmp_path, env=prod)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Production's own backups go on beside the pilot's: its dump's record (still `running` in
    # the dump it is in) was rebuilt from the store, not kept, so nothing takes it for an
    # interrupted backup, and the copied dumps' ids are not recorded twice.
    own = _json(stave("backup", "run", "--no-drill", "--json", cwd=tmp_path, env=prod))
    listed = _json(stave("backup", "list", "--json", cwd=tmp_path, env=prod))
    assert {dump["id"], own["id"]} <= {b["id"] for b in listed["backups"]}
    with psycopg.connect(psycopg_dsn(pg_server.url(name))) as conn:
        records = dict(conn.execute("SELECT id::text, env FROM backup_record").fetchall())
    assert records[dump["id"]] == "prod" and set(records.values()) == {"prod"}

    missing = stave(
        "store", "copy", "--from-home", str(tmp_path / "nowhere"), cwd=tmp_path, env=prod
    )
    assert missing.returncode == 1
    assert "no filesystem store of environment dev at" in assert_one_line_error(missing)


def test_a_corrupted_pilot_object_is_not_copied(tmp_path: Path, s3_endpoint: str) -> None:
    source = FilesystemStore(tmp_path / "objects", "stave")
    source.put_bytes("dev/audio/a.flac", b"fine")
    source.put_bytes("dev/audio/b.flac", b"bytes")
    (source.base / "dev" / "audio" / "b.flac").write_bytes(b"bytez")  # rot after the write
    target = MinioStore(
        endpoint=s3_endpoint,
        access_key="test-access",
        secret_key="test-secret",
        bucket=f"corrupt-{uuid.uuid4().hex[:8]}",
        secure=False,
    )
    with pytest.raises(ObjectCorrupted, match=r"dev/audio/b\.flac"):
        pilot.copy_objects(source, target, from_env="dev", to_env="prod")
    assert target.get_bytes("prod/audio/a.flac") == b"fine"
    assert not target.exists("prod/audio/b.flac")


def test_archived_moves_are_repointed_in_order(
    pg_server: RunningServer, database_url: str, tmp_path: Path
) -> None:
    name = f"repoint_{uuid.uuid4().hex[:8]}"
    ensure_database(pg_server.url("postgres"), name)
    url = pg_server.url(name)
    migrate.upgrade(url)
    moved = [
        {
            "asset_id": str(uuid.uuid4()),
            "from": f"dev/audio/{i}.flac",
            "to": f"dev/archive/audio/{i}.flac",
        }
        for i in range(5)
    ] + [{"asset_id": str(uuid.uuid4()), "from": "stage/audio/x.flac", "to": "stage/x.flac"}]
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO archive_batch (id, table_name, object_key, row_count, checksum, "
                "time_from, time_to, moved_objects) VALUES (gen_random_uuid(), 'audio_asset', "
                "'dev/archive/audio_asset/x.parquet', 6, 'c', now(), now(), CAST(:m AS jsonb))"
            ),
            {"m": json.dumps(moved)},
        )
    store = FilesystemStore(tmp_path / "objects", "stave")
    assert pilot.repoint_rows(engine, store, from_env="dev", to_env="prod") == 1
    with engine.connect() as conn:
        key, after = conn.execute(text("SELECT object_key, moved_objects FROM archive_batch")).one()
    engine.dispose()
    assert key == "prod/archive/audio_asset/x.parquet"
    assert [m["to"] for m in after] == [
        *(f"prod/archive/audio/{i}.flac" for i in range(5)),
        "stage/x.flac",
    ]
    assert [m["from"] for m in after][:2] == ["prod/audio/0.flac", "prod/audio/1.flac"]
    assert [m["asset_id"] for m in after] == [m["asset_id"] for m in moved]
