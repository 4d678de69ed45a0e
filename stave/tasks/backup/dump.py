"""A logical backup: `pg_dump -Fc` streamed into the store, with a manifest whose row counts
come from the snapshot the dump itself reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from stave.infra.db import libpq_target
from stave.infra.objectstore.base import ObjectStore
from stave.models.base import utcnow
from stave.tasks.backup.records import manifest_key, recorded, succeed
from stave.tasks.backup.tools import (
    BackupResult,
    check_major,
    count_rows,
    stream_to_store,
    tool,
    tool_version,
    user_tables,
)

CONTENT_TYPE = "application/vnd.postgresql.custom-dump"


def run_backup(
    engine: Engine,
    store: ObjectStore,
    *,
    url: str,
    env_name: str,
    progress: Callable[[int], None] | None = None,
) -> BackupResult:
    """Dump the database at `url` into the store; the record says how it went.

    `progress`, if given, is called with the number of bytes each time a chunk is streamed.
    """
    with recorded(engine, store, kind="dump", env_name=env_name) as (backup_id, key, started):
        result = _dump(
            store, url=url, key=key, backup_id=backup_id, started=started, progress=progress
        )
        succeed(
            engine, backup_id, result.manifest, server_version=result.manifest["server_version"]
        )
    return result


def _dump(
    store: ObjectStore,
    *,
    url: str,
    key: str,
    backup_id: uuid.UUID,
    started: datetime,
    progress: Callable[[int], None] | None,
) -> BackupResult:
    target, env = libpq_target(url)
    snapshot_engine = create_engine(url, poolclass=NullPool)
    try:
        with (
            snapshot_engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            # Row counts and the dump see the same snapshot; holding this transaction open
            # keeps the snapshot importable until pg_dump has taken it.
            conn.execute(text("SET TRANSACTION READ ONLY"))
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            version = conn.execute(text("SHOW server_version")).scalar_one()
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            check_major(str(version))
            info, _ = stream_to_store(
                # --enable-row-security: run as a role subject to the per-user policies
                # (0006), pg_dump would otherwise refuse; with no user context they pass
                # every row, so the dump is whole either way.
                [
                    tool("pg_dump"),
                    "-Fc",
                    "--enable-row-security",
                    f"--snapshot={snapshot}",
                    f"--dbname={target}",
                ],
                env,
                store,
                key,
                content_type=CONTENT_TYPE,
                progress=progress,
            )
            tables = count_rows(conn, user_tables(conn))
    finally:
        snapshot_engine.dispose()
    finished = utcnow()
    manifest = {
        "id": str(backup_id),
        "kind": "dump",
        "format": "pg_dump custom",
        "database": database,
        "server_version": str(version),
        "pg_dump": tool_version("pg_dump"),
        "object_key": key,
        "bytes": info.size,
        "sha256": info.sha256,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "tables": tables,
    }
    store.put_bytes(
        manifest_key(key), json.dumps(manifest, indent=2).encode(), content_type="application/json"
    )
    assert info.sha256 is not None
    return BackupResult(
        backup_id, key, info.size, info.sha256, manifest, (finished - started).total_seconds()
    )
