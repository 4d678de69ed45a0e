"""`stave server` on PostgreSQL: a throwaway cluster from Debian's postgresql-15 binaries (which
have `pg_trgm`, unlike pgserver's), Prefect's schema migrated into it through asyncpg, and the
work pools and a flow run made through it. The embedded default stays SQLite."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from stave.infra import embedded_pg
from stave.infra.db import ensure_database
from stave.infra.embedded_pg import EmbeddedPostgres, RunningServer
from tests.test_deployments import run_json, start, stop, wait_healthy
from tests.utils.net import free_port

DEBIAN_PG = Path("/usr/lib/postgresql/15/bin")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DEBIAN_PG / "initdb").exists(),
        reason="Debian's postgresql-15 is not installed (.ci/run installs it)",
    ),
]


@pytest.fixture
def debian_postgres(
    tmp_path: Path, pg_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    """A cluster of Debian's PostgreSQL 15, run the way Stave runs its embedded one (as the
    `pgserver` OS user when root, loopback TCP only), from those binaries instead."""
    monkeypatch.setattr(embedded_pg, "bin_dir", lambda: DEBIAN_PG)
    cluster = EmbeddedPostgres(tmp_path / "prefect-pg", log_file=tmp_path / "prefect-pg.log")
    running = cluster.ensure_running()
    try:
        yield running
    finally:
        cluster.stop()


def test_stave_server_runs_on_postgresql(
    debian_postgres: RunningServer, database_url: str, tmp_path: Path
) -> None:
    ensure_database(debian_postgres.url("postgres"), "prefect")
    prefect_db = debian_postgres.url("prefect").replace("+psycopg", "+asyncpg")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))}
    env = {
        **clean,
        "STAVE_HOME": str(tmp_path / "home"),
        "STAVE_DATABASE_URL": database_url,
        "STAVE_PREFECT_DATABASE_URL": prefect_db,
        "STAVE_PREFECT_SERVER_PORT": str(free_port()),
        "STAVE_PREFECT_API_AUTH_STRING": f"ops:{uuid.uuid4().hex}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    api = f"http://127.0.0.1:{env['STAVE_PREFECT_SERVER_PORT']}/api"
    token = base64.b64encode(env["STAVE_PREFECT_API_AUTH_STRING"].encode()).decode()
    http = httpx.Client(base_url=api, headers={"Authorization": f"Basic {token}"}, timeout=60)
    log = tmp_path / "server.log"
    server = start(["server"], env, log)
    try:
        wait_healthy(http, 120, "the Prefect server on PostgreSQL did not answer", log)
        pools = run_json(["pools", "setup"], env, tmp_path)
        assert pools
        flow = http.post("/flows/", json={"name": f"pg-{uuid.uuid4().hex[:6]}"}).json()
        made = http.post("/flow_runs/", json={"flow_id": flow["id"], "name": "on-postgres"})
        assert made.status_code == 201, made.text
    finally:
        stop(server)
        http.close()
    # Prefect's own tables are in that PostgreSQL, with the pools and the run just made.
    engine = create_engine(debian_postgres.url("prefect"), poolclass=NullPool)
    with engine.connect() as conn:
        names = set(conn.execute(text("SELECT name FROM work_pool")).scalars())
        runs = conn.execute(text("SELECT count(*) FROM flow_run WHERE name = 'on-postgres'"))
        trgm = conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'"))
        assert {"gpu", "cpu"} <= names
        assert runs.scalar_one() == 1 and trgm.scalar_one() == 1
    engine.dispose()
