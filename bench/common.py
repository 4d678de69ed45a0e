"""Helpers the benchmarks share: a throwaway home, assets in bulk, a settled server."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import uuid
from datetime import datetime, timedelta
from typing import Any

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
        embedded_server(get_settings()).stop()
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
