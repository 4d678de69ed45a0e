"""Putting an archived month back, with what travelled with it and the parents it needs."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from stave.infra.errors import InvalidInput, NotFound
from stave.infra.objectstore import ObjectStore
from stave.infra.objectstore.keys import scoped_key
from stave.infra.pgraw import driver_connection
from stave.models import archive_policies
from stave.tasks.archive.groups import columns_of, members
from stave.tasks.archive.read import download, list_batches
from stave.tasks.archive.run import exclusive

# Rows inserted per read of an archived file.
READ_CHUNK = 5000


def restore(
    engine: Engine,
    store: ObjectStore,
    table: str,
    year: int,
    month: int,
    tmp_dir: Path,
    *,
    env_name: str,
) -> dict[str, int]:
    """Put a root table's archived month back (with what travelled with it, and archived
    parents its rows need). Idempotent: rows already present are left as they are."""
    policies = {p.table: p for p in archive_policies()}
    if table not in policies:
        raise InvalidInput(f"{table} is not an archived table ({', '.join(policies)})")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    with engine.connect() as conn:
        groups = (
            conn.execute(
                text(
                    "SELECT DISTINCT group_id FROM archive_batch WHERE status = 'committed' "
                    "AND root_table = :t AND time_from >= :s AND time_from < :e"
                ),
                {"t": table, "s": start, "e": end},
            )
            .scalars()
            .all()
        )
    if not groups:
        raise NotFound(f"no archived {table} rows for {year:04d}-{month:02d} (stave archive list)")
    restored: dict[str, int] = {}
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(engine), tempfile.TemporaryDirectory(dir=tmp_dir) as scratch:
        for group_id in groups:
            with engine.connect() as conn:
                files = {
                    r.table_name: r.object_key
                    for r in conn.execute(
                        text(
                            "SELECT table_name, object_key FROM archive_batch WHERE group_id = :g"
                        ),
                        {"g": group_id},
                    )
                }
            order = [m.table for m in members(policies[table])]
            for name in order:
                path = download(store, [{"object_key": files[name]}], Path(scratch))[0]
                _restore_parents(engine, store, name, path, Path(scratch), restored)
                restored[name] = restored.get(name, 0) + _insert_file(engine, name, path)
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE archive_batch SET restored_at = now() WHERE group_id = :g"),
                    {"g": group_id},
                )
    _rescope(engine, store, env_name)
    return restored


def _rescope(engine: Engine, store: ObjectStore, env_name: str) -> None:
    """Rows archived before keys were scoped by environment come back with their old keys:
    point them at the scoped object where `stave store migrate-keys` moved it."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, object_key FROM audio_asset WHERE object_key NOT LIKE :scoped "
                "AND (object_key LIKE 'archive/%' OR object_key LIKE 'audio/%')"
            ),
            {"scoped": f"{env_name}/%"},
        ).all()
    for row in rows:
        new = scoped_key(env_name, row.object_key)
        if new is not None and not store.exists(row.object_key) and store.exists(new):
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE audio_asset SET object_key = :k WHERE id = :id"),
                    {"k": new, "id": row.id},
                )


def _restore_parents(
    engine: Engine,
    store: ObjectStore,
    table: str,
    path: Path,
    scratch: Path,
    restored: dict[str, int],
) -> None:
    """Rows of archived root tables that `table`'s rows point at (a task's job, a revision's
    parent) are put back first, so the foreign keys hold."""
    import pyarrow.parquet as pq  # lazy: off the CLI's start-up path

    roots = {p.table for p in archive_policies()}
    for fk in SQLModel.metadata.tables[table].foreign_keys:
        parent = fk.column.table.name
        if parent not in roots:
            continue
        wanted = {
            v for v in pq.read_table(path, columns=[fk.parent.name]).column(0).to_pylist() if v
        }
        if not wanted:
            continue
        with engine.connect() as conn:
            present = {
                str(i)
                for i in conn.execute(
                    text(f"SELECT id FROM {parent} WHERE id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": sorted(wanted)},
                ).scalars()
            }
        missing = wanted - present
        if not missing:
            continue
        for batch in list_batches(engine, parent):
            source = download(store, [batch], scratch)[0]
            rows = pq.read_table(source).to_pylist()
            needed = [r for r in rows if r["id"] in missing]
            if needed:
                _restore_parents(engine, store, parent, source, scratch, restored)
                restored[parent] = restored.get(parent, 0) + _insert_rows(engine, parent, needed)
                missing -= {r["id"] for r in needed}
            if not missing:
                break


def _insert_file(engine: Engine, table: str, path: Path) -> int:
    import pyarrow.parquet as pq  # lazy: off the CLI's start-up path

    added = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_CHUNK):
        added += _insert_rows(engine, table, batch.to_pylist())
    return added


def _insert_rows(engine: Engine, table: str, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    with engine.connect() as conn:
        columns = columns_of(conn, table)
    names = [c.name for c in columns]
    casts = [
        f"CAST(%({c.name})s AS {c.sql_type})"
        if c.sql_type in ("uuid", "jsonb", "json") or c.sql_type.startswith("vector")
        else f"%({c.name})s"
        for c in columns
    ]
    sql = (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(casts)}) "
        "ON CONFLICT (id) DO NOTHING"
    )
    for row in rows:
        for c in columns:
            if c.sql_type.startswith("vector") and row[c.name] is not None:
                row[c.name] = np.asarray(row[c.name], dtype=np.float32)
    with driver_connection(engine) as conn:
        with conn.cursor() as cur:
            added = 0
            for row in rows:
                cur.execute(sql, row)
                added += max(cur.rowcount, 0)
        conn.commit()
    return added
