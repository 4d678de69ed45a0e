"""Steps 2 to 4 of a group: write its files, read them back, delete its rows; `process_group`.

`process_group` is the one path for a group, whoever runs it: the CLI's loop, the weekly
flow's Prefect task and the benchmark call it with the same `RunContext` (the run's Arrow
connection and its once-per-run decision on the fast delete).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from stave.infra.objectstore import ObjectStore
from stave.infra.pgarrow import ArrowSource
from stave.infra.roles import has_own_triggers, may_skip_triggers
from stave.models import LifecyclePolicy, archive_policies
from stave.tasks.archive.digest import KeyDigest, checksum
from stave.tasks.archive.groups import (
    ArchiveBusy,
    ArchiveConflict,
    Column,
    Group,
    Member,
    columns_of,
    members,
)

log = logging.getLogger(__name__)
PARQUET = "application/vnd.apache.parquet"
# How long a group's delete waits for writers of its travellers to finish.
LOCK_WAIT_S = 5


def arrow_source(engine: Engine) -> ArrowSource:
    """The Arrow connection archival reads rows through, with its failures worded for it."""
    return ArrowSource(
        engine, who="archive", aftermath="nothing was deleted, the next run redoes this group"
    )


@dataclass
class RunContext:
    """What a run decides once and every group uses: where files are staged, the Arrow
    connection rows are read through (None: one per group), and per root table whether its
    groups may be deleted with the foreign-key triggers off (`fast_delete_allowed`)."""

    tmp_dir: Path
    source: ArrowSource | None = None
    fast: dict[str, bool] = field(default_factory=dict)


def process_group(
    engine: Engine,
    store: ObjectStore,
    policy: LifecyclePolicy,
    group: Group,
    context: RunContext,
    progress: Callable[[int], None] | None = None,
) -> dict[str, tuple[int, str]]:
    """Write a group's files, read them back, then delete its rows in one transaction.
    Returns the rows and digest written per table (also left on `group.written`)."""
    write(engine, store, policy, group, context.tmp_dir, progress, context.source)
    verify(store, group)
    commit(engine, store, policy, group, fast=context.fast.get(policy.table))
    return group.written


def write(
    engine: Engine,
    store: ObjectStore,
    policy: LifecyclePolicy,
    group: Group,
    tmp_dir: Path,
    progress: Callable[[int], None] | None = None,
    source: ArrowSource | None = None,
) -> None:
    """Each member table's rows to its Parquet file in the store; audio copied and verified.
    `source`: a run's open connection for reading rows as Arrow (else one for this group)."""
    moved = {m["asset_id"]: m["to"] for m in group.moved}
    for item in group.moved:
        store.copy(item["from"], item["to"])
        store.verify(item["to"], expected_sha256=item["sha256"])
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if source is None:
            source = stack.enter_context(arrow_source(engine))
        for member in members(policy):
            with engine.connect() as conn:
                columns = columns_of(conn, member.table)
            with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".parquet") as handle:
                rekey = moved if member.table == "audio_asset" else {}
                keys = _write_rows(source, member, group, columns, handle.name, rekey)
                with open(handle.name, "rb") as stream:
                    store.put_stream(group.key(member.table), stream, content_type=PARQUET)
            group.written[member.table] = (keys.count, keys.hexdigest())
            if progress is not None and member.table == policy.table:
                progress(keys.count)


def _schema(columns: Sequence[Column]) -> Any:
    import pyarrow as pa  # lazy: off the CLI's start-up path

    return pa.schema([(c.name, c.arrow_type()) for c in columns])


def _write_rows(
    source: ArrowSource,
    member: Member,
    group: Group,
    columns: Sequence[Column],
    path: str,
    moved: dict[str, str],
) -> KeyDigest:
    """A table's rows in a group as Arrow batches from `source`, written to Parquet one batch
    at a time, so memory holds one batch whatever the group's size. A million task rows take
    2.5 s here, where text COPY read by pyarrow's CSV reader takes 3.3; 100,000 embeddings
    2.6 s, where a server-side cursor and numpy took 9.1. Returns the digest of the ids
    written."""
    import pyarrow as pa  # lazy: off the CLI's start-up path
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = _schema(columns)
    id_at = schema.get_field_index("id")
    key_at = schema.get_field_index("object_key")
    select = ", ".join(c.select for c in columns)
    if moved:
        moved_ids = pa.array(list(moved), pa.string())
        moved_keys = pa.array(list(moved.values()), pa.string())
    keys = KeyDigest()
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in source.batches(
            f"SELECT {select} FROM {member.table} WHERE {group.condition(member)}", group.params
        ):
            # The schema's exact types (real[] to fixed-size lists), without the driver's
            # field metadata.
            batch = batch.cast(schema)
            if moved:
                # Archived asset rows point at the audio's new key under archive/.
                found = pc.take(moved_keys, pc.index_in(batch[id_at], value_set=moved_ids))
                batch = batch.set_column(key_at, "object_key", pc.coalesce(found, batch[key_at]))
            writer.write_batch(batch)
            keys.add(batch.column(id_at))
    return keys


def read_keys(store: ObjectStore, key: str) -> Any:
    """The id column of an archived file, read back from the store (into memory: a file holds
    one group, bounded by the batch size)."""
    import pyarrow as pa  # lazy: off the CLI's start-up path
    import pyarrow.parquet as pq

    # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose first import
    # (pandas with it) costs a quarter of a second per run.
    data = pa.BufferReader(store.get_bytes(key))
    return pq.ParquetFile(data).read(columns=["id"]).column(0).cast(pa.string())


def verify(store: ObjectStore, group: Group) -> None:
    for table, (rows, expected) in group.written.items():
        found = read_keys(store, group.key(table))
        digest = checksum(found)
        if len(found) != rows or digest != expected:
            raise ArchiveConflict(
                f"archive file {group.key(table)} reads back {len(found)} rows with checksum "
                f"{digest[:12]}…, expected {rows} and {expected[:12]}…; nothing deleted"
            )


def fast_delete_allowed(conn: Connection, policy: LifecyclePolicy) -> bool:
    """Whether a group's rows may be deleted with the row-by-row foreign-key triggers off.

    Only when (1) every foreign key into a member table comes from a member table, so every row
    that could refer to the group is itself counted and deleted; (2) the member tables have no
    triggers of their own (`replica` would silence them too); and (3) this role may set
    `session_replication_role` (a superuser, or a member of stave_archiver: migration 0007)."""
    return group_is_closed(conn, policy) and may_skip_triggers(conn)


def fast_deletes(engine: Engine) -> dict[str, bool]:
    """`fast_delete_allowed` for every archive table, decided once for a run."""
    with engine.connect() as conn:
        may_skip = may_skip_triggers(conn)
        closed = {p.table: group_is_closed(conn, p) for p in archive_policies()}
    if not may_skip and any(closed.values()):
        log.info(
            "archive: this role may not set session_replication_role, so groups are deleted "
            "with the foreign-key triggers on (row by row, several times slower); grant "
            "stave_archiver to this login"
        )
    return {table: may_skip and is_closed for table, is_closed in closed.items()}


def group_is_closed(conn: Connection, policy: LifecyclePolicy) -> bool:
    tables = [m.table for m in members(policy)]
    outside_keys = conn.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' "
            "  AND confrelid = ANY(CAST(:t AS regclass[])) "
            "  AND NOT conrelid = ANY(CAST(:t AS regclass[])))"
        ),
        {"t": tables},
    ).scalar()
    return not outside_keys and not has_own_triggers(conn, tables)


def commit(
    engine: Engine,
    store: ObjectStore,
    policy: LifecyclePolicy,
    group: Group,
    fast: bool | None = None,
) -> None:
    """Delete exactly the archived rows and mark the files committed, in one transaction; then
    remove the hot audio objects. `fast`: None decides by `fast_delete_allowed`."""
    order = members(policy)
    # Dependants first: embeddings before their assets, travellers before the root.
    ordered = [*sorted(order[1:], key=lambda m: m.depends_on is None), order[0]]
    with engine.begin() as conn:
        if fast is None:
            fast = fast_delete_allowed(conn, policy)
        if fast:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            # Nothing may write the travellers while the group goes (SHARE conflicts with
            # INSERT, UPDATE and DELETE): a writer that got there first is waited for, and what
            # it committed is seen, and counted, by the deletes below; one that comes later
            # waits for this transaction, then fails its own foreign-key check. O(1): locking
            # the parent rows instead cost a heap write per row (0.44 vs 0.56 of the baseline's
            # throughput). Writers queue behind a waiting LOCK, so the wait is kept short.
            travellers = ", ".join(m.table for m in order[1:])
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_S}s'"))
            try:
                if travellers:
                    conn.execute(text(f"LOCK TABLE {travellers} IN SHARE MODE"))
            except OperationalError as err:
                if getattr(err.orig, "sqlstate", None) != "55P03":  # lock_not_available
                    raise
                raise ArchiveBusy(
                    f"{travellers} stayed busy for {LOCK_WAIT_S} s (long write transactions); "
                    "nothing deleted, the next run redoes this batch"
                ) from err
        for member in ordered:
            deleted = conn.execute(
                text(f"DELETE FROM {member.table} WHERE {group.condition(member)}"),
                group.params,
            ).rowcount
            _check_count(member.table, deleted, group.written[member.table][0])
        conn.execute(
            text(
                "UPDATE archive_batch SET status = 'committed', row_count = :n, "
                "checksum = :c WHERE id = :id AND status = 'writing'"
            ),
            [
                {"n": group.written[t][0], "c": group.written[t][1], "id": file_id}
                for t, file_id in group.files.items()
            ],
        )
    store.delete_many([m["from"] for m in group.moved])


def _check_count(table: str, found: int, archived: int) -> None:
    if found != archived:
        raise ArchiveConflict(
            f"{table}: {found} rows to delete but {archived} were archived "
            "(rows changed meanwhile); nothing deleted, the next run redoes this batch"
        )
