"""An external PostgreSQL set up exactly as docs/production.md says: the DBA runs the page's SQL
as written (with real passwords), then Stave connects as the owner login (not a superuser)
and as an app login, with STAVE_ENV=prod. What the page says each privilege is for must hold:
the owner migrates a fresh database, takes a dump with its restore drill and a base backup;
the app login generates and publishes."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from stave.infra.db import psycopg_dsn
from stave.infra.embedded_pg import EmbeddedPostgres, bin_dir
from stave.infra.settings import load_settings
from tests.test_cli import stave

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PRODUCTION = Path(__file__).resolve().parent.parent / "docs" / "production.md"


def sql_blocks() -> list[str]:
    """The page's SQL blocks, in order."""
    return re.findall(r"^```sql\n(.*?)^```", PRODUCTION.read_text(), re.M | re.S)


def run_as_dba(superuser_url: str, sql: str, passwords: dict[str, str]) -> None:
    """psql, as a DBA would run the block: the page's `'…'` passwords filled in per role."""
    for role, password in passwords.items():
        sql = re.sub(rf"(ROLE {role} LOGIN PASSWORD )'…'", rf"\1'{password}'", sql)
    assert "'…'" not in sql, f"a password left to fill in:\n{sql}"
    done = subprocess.run(
        [str(bin_dir() / "psql"), psycopg_dsn(superuser_url), "-v", "ON_ERROR_STOP=1", "-q"],
        input=sql,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.timeout(420)
def test_the_documented_privileges_are_enough(
    tmp_path: Path, s3_endpoint: str, bucket_name: str
) -> None:
    store = {
        "STAVE_S3_ENDPOINT": s3_endpoint,
        "STAVE_S3_ACCESS_KEY": "test-access",
        "STAVE_S3_SECRET_KEY": "test-secret",
        "STAVE_S3_SECURE": "false",  # the loopback test server has no TLS
        "STAVE_BUCKET": bucket_name,
    }
    # The database host: its archive command set up as `stave backup wal-setup` writes it.
    archive_to = load_settings(
        env="prod",
        home=tmp_path / "db-host",
        database_url="postgresql://x:archive-only@127.0.0.1/x",
        s3_endpoint=s3_endpoint,
        s3_access_key="test-access",
        s3_secret_key="test-secret",
        s3_secure=False,
        bucket=bucket_name,
    )
    cluster = EmbeddedPostgres(
        tmp_path / "external-pg", log_file=tmp_path / "external-pg.log", archive_to=archive_to
    )
    server = cluster.ensure_running()
    try:
        owner_password, worker_password, reports_password = (uuid.uuid4().hex for _ in "abc")
        dba, logins = sql_blocks()
        run_as_dba(server.url("postgres"), dba, {"stave_owner": owner_password})

        def url(login: str, password: str) -> str:
            return f"postgresql://{login}:{password}@127.0.0.1:{server.port}/stave"

        owner = {
            **store,
            "STAVE_ENV": "prod",
            "STAVE_HOME": str(tmp_path / "cpu-host"),
            "STAVE_DATABASE_URL": url("stave_owner", owner_password),
        }
        ok(stave("db", "upgrade", cwd=tmp_path, env=owner))
        ok(stave("doctor", cwd=tmp_path, env=owner))
        ok(stave("store", "setup", cwd=tmp_path, env=owner))
        dump = json.loads(ok(stave("backup", "run", "--json", cwd=tmp_path, env=owner)))
        assert dump["drill"]["tables"] >= 10, dump  # restored into a scratch database
        base = json.loads(ok(stave("backup", "base", "--json", cwd=tmp_path, env=owner)))
        listed = json.loads(ok(stave("backup", "list", "--json", cwd=tmp_path, env=owner)))
        kinds = {b["id"]: b["kind"] for b in listed["backups"]}
        assert kinds == {dump["id"]: "dump", base["backup_id"]: "base"}, listed

        run_as_dba(
            server.url("stave"),
            logins,
            {"stave_worker": worker_password, "stave_reports": reports_password},
        )
        worker = {
            **store,
            "STAVE_ENV": "prod",
            "STAVE_HOME": str(tmp_path / "gpu-host"),
            "STAVE_DATABASE_URL": url("stave_worker", worker_password),
            "STAVE_PUBLISH_PAGES": "false",
        }
        prompts = tmp_path / "prompts.csv"
        prompts.write_text(
            "prompt,duration_s,steps,seed\n"
            '"bright bell arpeggio in D minor, 96 bpm",1,2,1\n'
            '"warm organ chords in F major, 72 bpm",1,2,2\n'
        )
        made = json.loads(ok(stave("generate", str(prompts), "--json", cwd=tmp_path, env=worker)))
        assert made["published"] == 2, made
        reports = {**worker, "STAVE_DATABASE_URL": url("stave_reports", reports_password)}
        report = json.loads(ok(stave("report", "models", "--json", cwd=tmp_path, env=reports)))
        assert sum(row["clips"] for row in report) == 2, report
    finally:
        cluster.stop()
