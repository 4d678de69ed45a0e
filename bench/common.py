"""Helpers the benchmarks share: a throwaway home, assets in bulk, a settled server."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.pgraw import copy_in


def throwaway_home() -> None:
    """The embedded PostgreSQL and filesystem store under a temporary STAVE_HOME, unless one
    is set; removed when the benchmark ends, its embedded server stopped first, also when it
    is interrupted (Ctrl-C, SIGTERM): a benchmark leaves no home and no server behind."""
    if "STAVE_HOME" in os.environ:
        return
    home = tempfile.mkdtemp(prefix="stave-bench-")
    os.environ["STAVE_HOME"] = home
    atexit.register(_remove_home, home)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so atexit runs


def _remove_home(home: str) -> None:
    from stave.infra.db import dispose_engine, embedded_server
    from stave.infra.settings import get_settings

    try:
        dispose_engine()
        server = embedded_server(get_settings())
        if server.pgdata.exists():  # a benchmark that never started one has none to stop
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def migrated_engine() -> tuple[Any, Engine]:
    from stave.infra import migrate
    from stave.infra.db import database_url, get_engine
    from stave.infra.settings import get_settings

    settings = get_settings()
    migrate.upgrade(database_url(settings))
    return settings, get_engine(settings)


def bulk_assets(engine: Engine, n: int, start: datetime) -> tuple[list[uuid.UUID], list[datetime]]:
    """n audio_asset rows (no objects: the write benchmarks never read audio), 1 ms apart."""
    from stave.models.base import new_id

    ids = [new_id() for _ in range(n)]
    created = [start + timedelta(milliseconds=i) for i in range(n)]
    columns = (
        "id, user_id, object_key, sha256, bytes, format, sample_rate, channels, duration_s, "
        "created_at"
    )
    with copy_in(engine, f"COPY audio_asset ({columns}) FROM STDIN") as copy:
        for asset_id, at in zip(ids, created, strict=True):
            key = f"dev/audio/{asset_id}.flac"
            copy.write_row((asset_id, "bench", key, "0" * 64, 1, "flac", 16000, 1, 10.0, at))
    return ids, created


def copy_embeddings(engine: Engine, ids: list[uuid.UUID], vectors: Any, version: str) -> None:
    """The vectors into latent_embedding for `version`, with the backfill's binary COPY."""
    from stave.tasks.backfill import copy_chunks

    sql = (
        "COPY latent_embedding (id, asset_id, encoder_version, embedding) "
        "FROM STDIN WITH (FORMAT BINARY)"
    )
    with copy_in(engine, sql) as copy:
        for chunk in copy_chunks(ids, vectors, version):
            copy.write(chunk)


def settled(engine: Engine, *tables: str) -> None:
    """Vacuum and checkpoint, so a timing does not pay for the work the previous one left."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f"VACUUM {table}"))
        conn.execute(text("CHECKPOINT"))


DEBIAN_PG = "/usr/lib/postgresql/15/bin"


@contextlib.contextmanager
def prefect_server() -> Iterator[str]:
    """A Prefect server for benchmarks with several worker processes; its API URL.

    `stave server` on a throwaway PostgreSQL of Debian's postgresql-15 (as a fleet runs it:
    with several writers, the SQLite default locks up), under this STAVE_HOME; Prefect's test
    harness (SQLite) where those binaries are missing. Both stopped on the way out.
    """
    if not os.path.exists(os.path.join(DEBIAN_PG, "initdb")):
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        print("(Debian's postgresql-15 missing: Prefect's SQLite test server)", file=sys.stderr)
        with prefect_test_harness(server_startup_timeout=120):
            yield str(PREFECT_API_URL.value())
        return
    from pathlib import Path

    from stave.infra import embedded_pg
    from stave.infra.db import ensure_database
    from stave.infra.embedded_pg import EmbeddedPostgres

    home = Path(os.environ["STAVE_HOME"])
    saved = embedded_pg.bin_dir
    embedded_pg.bin_dir = lambda: Path(DEBIAN_PG)
    cluster = EmbeddedPostgres(home / "prefect-pg", log_file=home / "prefect-pg.log")
    try:
        running = cluster.ensure_running()
    finally:
        embedded_pg.bin_dir = saved
    ensure_database(running.url("postgres"), "prefect")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "STAVE_PREFECT_DATABASE_URL": running.url("prefect"),
        "STAVE_PREFECT_SERVER_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = open(home / "prefect-server.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "stave", "server"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the Prefect server did not start; see {home}/prefect-server.log")
            time.sleep(0.5)
        yield api
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        embedded_pg.bin_dir = lambda: Path(DEBIAN_PG)
        try:
            cluster.stop()
        finally:
            embedded_pg.bin_dir = saved
