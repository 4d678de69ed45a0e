"""Six-month archival: old rows to Parquet in the object store, verified, then deleted.

What ages is declared on the models (`models.lifecycle_policies()`): each `archive` table is a
root; its `travels_with` tables go with each root row (a task with its events, its asset and
the asset's embeddings). A group of files is archived in four durable steps:

1. `prepare`: the root rows (one month, up to a batch) are chosen and an `archive_batch` row per
   file is committed with status `writing`, naming every object that will be written. A root
   whose rows age on their timestamp alone is cut into key ranges, `(created_at, id)` from the
   group's first row to its last; one with a further condition (a job no hot task points at)
   names its rows by id.
2. `write`: each table's rows stream out of PostgreSQL (binary `COPY … TO STDOUT` decoded into
   Arrow by the ADBC driver) into a zstd Parquet file one record batch at a time, so memory
   does not grow with the group, and up to the store; audio objects are copied to the archive
   prefix and verified.
3. `verify`: each file is read back from the store: its row count and a checksum over its
   primary keys must match what was written.
4. `commit`: one transaction deletes exactly the archived rows (counts must match, or nothing
   is deleted) and marks the files `committed`; the hot audio objects are deleted after it.
   When every foreign key into the group comes from the group's own tables, the deletes run
   with the row-by-row foreign-key triggers off (`fast_delete_allowed`): the traveller tables
   are locked against writes first, so a row referring to the group that commits meanwhile is
   counted, not orphaned.

A crash before 4 leaves `writing` rows: the next run removes their files (and audio copies of
assets still hot) and starts over, so nothing is lost or archived twice. A crash after 4 can
leave hot audio objects no record points to, which `stave gc` removes. No Prefect here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from infra.db import plain_row, psycopg_dsn
from infra.errors import DatabaseUnavailable, InvalidInput, NotFound, StaveError
from infra.objectstore import ObjectStore
from infra.objectstore.keys import archive_key, archived_audio_key
from models.base import new_id
from models.lifecycle import LifecyclePolicy, lifecycle_policies

# Roots in the order they are archived: tasks first (their jobs and prompt revisions stay
# while any task points at them), then what only old rows referred to.
ROOT_ORDER = ("generation_task", "validation_run", "generation_job", "prompt_revision")
# A root row may leave only when no hot row still needs it.
ELIGIBLE = {
    "generation_job": "NOT EXISTS (SELECT 1 FROM generation_task t WHERE t.job_id = r.id)",
    "prompt_revision": (
        "NOT EXISTS (SELECT 1 FROM generation_task t WHERE t.prompt_revision_id = r.id) "
        "AND NOT EXISTS (SELECT 1 FROM prompt_revision c WHERE c.parent_id = r.id)"
    ),
}
READ_CHUNK = 5000
# How long a group's delete waits for writers of its travellers to finish.
LOCK_WAIT_S = 5
PARQUET = "application/vnd.apache.parquet"
# Where a traveller's condition puts the group's own condition on the root.
ROOT = "{root}"
log = logging.getLogger("stave.archive")


class ArchiveConflict(StaveError):
    """The rows changed between writing and deleting: nothing was deleted."""


class ArchiveBusy(StaveError):
    """Another archive run holds the lock."""


ARCHIVE_LOCK = int(hashlib.sha256(b"stave/archive").hexdigest()[:15], 16)


# -- the shape of a group ---------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """A table in a group and how its rows are found from the group's rows of the root (`where`
    holds `{root}`, the group's condition on the root table)."""

    table: str
    where: str
    depends_on: str | None = None


def members(policy: LifecyclePolicy) -> tuple[Member, ...]:
    """The root and its travellers, each with its condition, derived from the foreign keys."""
    # Keyed by table, not by policy: policies compare without their table, so two tables with
    # the same settings would share one entry.
    return _members(policy.table, policy.travels_with)


@functools.cache
def _members(root: str, travels_with: tuple[str, ...]) -> tuple[Member, ...]:
    from sqlmodel import SQLModel

    import models  # noqa: F401

    tables = SQLModel.metadata.tables
    found = [Member(root, ROOT)]
    pending = list(travels_with)
    while pending:
        progressed = False
        for name in list(pending):
            known = {m.table: m for m in found}
            for fk in tables[name].foreign_keys:
                parent = fk.column.table.name
                if parent in known:
                    column = fk.parent.name
                    where = f"{column} IN (SELECT id FROM {parent} WHERE {known[parent].where})"
                    found.append(Member(name, where, None if parent == root else parent))
                    pending.remove(name)
                    progressed = True
                    break
        if not progressed:
            raise StaveError(f"{root}: cannot reach {pending} through foreign keys")
    return tuple(found)


def archive_roots() -> list[LifecyclePolicy]:
    policies = [p for p in lifecycle_policies().values() if p.action == "archive"]
    order = {name: i for i, name in enumerate(ROOT_ORDER)}
    return sorted(policies, key=lambda p: (order.get(p.table, len(order)), p.table))


# -- columns and their Parquet types ------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # format_type(): uuid, jsonb, vector(512), timestamp with time zone, …

    @property
    def select(self) -> str:
        """The column as the archive reads it: pgvector as `real[]` (the driver decodes that
        array type, not pgvector's own), whatever the archive keeps as text as PostgreSQL
        prints it (uuid, and jsonb, whose JSON text round-trips exactly), the rest (numbers,
        booleans, timestamps) in binary."""
        import pyarrow as pa

        if self.sql_type.startswith("vector("):
            return f"{self.name}::real[] AS {self.name}"
        if self.arrow_type() == pa.string():
            return f"{self.name}::text AS {self.name}"
        return self.name

    def arrow_type(self) -> Any:
        import pyarrow as pa

        t = self.sql_type
        if t.startswith("vector("):
            return pa.list_(pa.float32(), int(t[7:-1]))
        return {
            "uuid": pa.string(),
            "jsonb": pa.string(),
            "json": pa.string(),
            "text": pa.string(),
            "integer": pa.int32(),
            "bigint": pa.int64(),
            "smallint": pa.int16(),
            "double precision": pa.float64(),
            "real": pa.float32(),
            "boolean": pa.bool_(),
            "timestamp with time zone": pa.timestamp("us", tz="UTC"),
            "timestamp without time zone": pa.timestamp("us"),
        }.get(t, pa.string() if t.startswith("character") else None) or pa.string()


def columns_of(conn: Connection, table: str) -> list[Column]:
    rows = conn.execute(
        text(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum"
        ),
        {"t": table},
    ).all()
    return [Column(name, sql_type) for name, sql_type in rows]


# -- 1. prepare -----------------------------------------------------------------------------------
@dataclass
class Group:
    id: uuid.UUID
    root: str
    year: int
    month: int
    rows: int | None  # root rows named by id; None: every root row in the key range
    time_from: datetime
    time_to: datetime
    # The group's condition on the root table (no alias) and its bound values.
    where: str
    params: dict[str, Any]
    files: dict[str, uuid.UUID] = field(default_factory=dict)  # table -> archive_batch id
    moved: list[dict[str, str]] = field(default_factory=list)
    written: dict[str, tuple[int, str]] = field(default_factory=dict)  # table -> rows, checksum

    def key(self, table: str) -> str:
        return archive_key(table, self.year, self.month, self.files[table])

    def condition(self, member: Member) -> str:
        return member.where.replace(ROOT, self.where)


def cutoff_for(policy: LifecyclePolicy, older_than_days: int | None, now: datetime) -> datetime:
    days = older_than_days if older_than_days is not None else policy.hot_days or 0
    return now - timedelta(days=days)


def count_eligible(conn: Connection, policy: LifecyclePolicy, cutoff: datetime) -> int:
    return int(
        conn.execute(
            text(f"SELECT count(*) FROM {policy.table} r WHERE {_eligible(policy)}"),
            {"cutoff": cutoff},
        ).scalar_one()
    )


def _eligible(policy: LifecyclePolicy) -> str:
    condition = f"r.{policy.timestamp_column} < :cutoff"
    extra = ELIGIBLE.get(policy.table)
    return f"{condition} AND {extra}" if extra else condition


def _month_end(at: datetime) -> datetime:
    return (at.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )


def _choose(
    conn: Connection,
    policy: LifecyclePolicy,
    cutoff: datetime,
    batch_size: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> tuple[int | None, datetime, datetime, str, dict[str, Any]] | None:
    """The next group's rows: (count if named by id, first time, last time, condition, its
    values)."""
    ts, table = policy.timestamp_column, policy.table
    # Past the last group's end when there was one: the index entries before it point at rows
    # this run deleted, and stepping over them costs a heap visit each.
    past = f"AND r.{ts} >= :after_ts AND (r.{ts}, r.id) > (:after_ts, :after_id) " if after else ""
    first = conn.execute(
        text(
            f"SELECT r.{ts}, r.id FROM {table} r WHERE {_eligible(policy)} {past}"
            f"ORDER BY r.{ts}, r.id LIMIT 1"
        ),
        {
            "cutoff": cutoff,
            "after_ts": after[0] if after else None,
            "after_id": after[1] if after else None,
        },
    ).first()
    if first is None:
        return None
    # One month per group (the files are partitioned by year=/month=), never past the cut-off.
    until = min(cutoff, _month_end(first[0].astimezone(UTC)))
    values = {"cutoff": cutoff, "until": until, "lo_ts": first[0], "lo_id": first[1]}
    window = (
        f"SELECT r.{ts} AS ts, r.id FROM {table} r WHERE {_eligible(policy)} "
        f"AND r.{ts} >= :lo_ts AND (r.{ts}, r.id) >= (:lo_ts, :lo_id) AND r.{ts} < :until "
        f"ORDER BY r.{ts}, r.id LIMIT :n"
    )
    if policy.table in ELIGIBLE:
        # Eligibility beyond age can change while the group is written: name the rows by id.
        n, ids, time_to = conn.execute(
            text(f"SELECT count(*), array_agg(id)::text, max(ts) FROM ({window}) s"),
            {**values, "n": batch_size},
        ).one()
        return n, first[0], time_to, "id = ANY(CAST(:ids AS uuid[]))", {"ids": ids}
    # Age alone decides: the group is every row from the first to the batch's last in key order
    # (an index walk on (ts, id)), or to the month's or the cut-off's last.
    last = (
        conn.execute(
            text(f"{window.replace('LIMIT :n', 'OFFSET :n LIMIT 1')}"),
            {**values, "n": batch_size - 1},
        ).first()
        or conn.execute(
            text(
                f"SELECT r.{ts}, r.id FROM {table} r WHERE r.{ts} >= :lo_ts AND r.{ts} < :until "
                f"ORDER BY r.{ts} DESC, r.id DESC LIMIT 1"
            ),
            values,
        ).one()
    )
    where = (
        f"{ts} >= :lo_ts AND {ts} <= :hi_ts "
        f"AND ({ts}, id) >= (:lo_ts, :lo_id) AND ({ts}, id) <= (:hi_ts, :hi_id)"
    )
    bounds = {"lo_ts": first[0], "lo_id": first[1], "hi_ts": last[0], "hi_id": last[1]}
    return None, first[0], last[0], where, bounds


def prepare(
    engine: Engine,
    policy: LifecyclePolicy,
    cutoff: datetime,
    batch_size: int,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> Group | None:
    """Choose the next group (the oldest month's oldest rows, past `after`, the key this run's
    last group of the table ended at) and record its files as `writing`; None when nothing in
    this table is old enough."""
    with engine.begin() as conn:
        chosen = _choose(conn, policy, cutoff, batch_size, after)
        if chosen is None:
            return None
        rows, time_from, time_to, where, params = chosen
        first = time_from.astimezone(UTC)
        group = Group(
            id=new_id(),
            root=policy.table,
            year=first.year,
            month=first.month,
            rows=rows,
            time_from=time_from,
            time_to=time_to,
            where=where,
            params=params,
        )
        for member in members(policy):
            group.files[member.table] = new_id()
        if "audio_asset" in group.files:
            audio = next(m for m in members(policy) if m.table == "audio_asset")
            assets = conn.execute(
                text(
                    "SELECT id, object_key, sha256, format FROM audio_asset "
                    f"WHERE {group.condition(audio)}"
                ),
                group.params,
            ).all()
            group.moved = [
                {
                    "asset_id": str(a.id),
                    "from": a.object_key,
                    "to": archived_audio_key(a.id, a.format),
                    "sha256": a.sha256,
                }
                for a in assets
                if not a.object_key.startswith("archive/")
            ]
        conn.execute(
            text(
                "INSERT INTO archive_batch (id, group_id, root_table, status, table_name, "
                "object_key, row_count, checksum, time_from, time_to, moved_objects, "
                "created_at) VALUES (:id, :g, :root, 'writing', :t, :key, 0, '', :tf, :tt, "
                "CAST(:moved AS jsonb), now())"
            ),
            [
                {
                    "id": file_id,
                    "g": group.id,
                    "root": group.root,
                    "t": table,
                    "key": group.key(table),
                    "tf": group.time_from,
                    "tt": group.time_to,
                    "moved": json.dumps(group.moved if table == "audio_asset" else []),
                }
                for table, file_id in group.files.items()
            ],
        )
    return group


# -- 2. write -------------------------------------------------------------------------------------
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
            source = stack.enter_context(ArrowSource(engine))
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


class ArrowSource:
    """Query results as Arrow record batches, through the ADBC PostgreSQL driver: it runs a
    query as `COPY … TO STDOUT (FORMAT binary)` and decodes the rows in C++, so PostgreSQL
    formats no timestamps, Python touches no row and nothing is parsed back from text.
    Opening one loads the server's type catalogue (about 30 ms): a run opens one for all
    its groups. The driver manager's own API, not its DB-API module, which imports
    pyarrow.dataset and pandas with it (0.2 s)."""

    def __init__(self, engine: Engine) -> None:
        import adbc_driver_manager
        import adbc_driver_postgresql

        self._engine = engine
        dsn = psycopg_dsn(engine.url.render_as_string(hide_password=False))
        with _unavailable_as_one_line():
            self._database = adbc_driver_postgresql.connect(dsn)
            try:
                self._connection = adbc_driver_manager.AdbcConnection(self._database)
            except BaseException:
                self._database.close()
                raise

    def __enter__(self) -> ArrowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()
        self._database.close()

    def batches(self, sql: str, params: dict[str, Any]) -> Iterator[Any]:
        """The rows of `sql` (with `:name` parameters), a record batch at a time."""
        import adbc_driver_manager
        import pyarrow as pa

        # Literal values, not bound parameters: the driver reads a bound statement's rows
        # through a prepared statement, row by row; an unbound one through COPY.
        statement = adbc_driver_manager.AdbcStatement(self._connection)
        try:
            with _unavailable_as_one_line():
                statement.set_sql_query(_inline(self._engine, sql, params))
                stream, _ = statement.execute_query()
                yield from pa.RecordBatchReader.from_stream(stream)
        finally:
            statement.close()


@contextlib.contextmanager
def _unavailable_as_one_line() -> Iterator[None]:
    """The driver's connection failures (server down, refused, dropped mid-read) as
    `DatabaseUnavailable` with libpq's first line; its other errors are bugs and stay as
    they are."""
    import adbc_driver_manager

    try:
        yield
    except adbc_driver_manager.OperationalError as err:
        detail = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise DatabaseUnavailable(
            f"archive: reading rows from PostgreSQL failed: {detail}; nothing was deleted, "
            "the next run redoes this group"
        ) from err


def _schema(columns: Sequence[Column]) -> Any:
    import pyarrow as pa

    return pa.schema([(c.name, c.arrow_type()) for c in columns])


def _bind(sql: str, params: dict[str, Any]) -> str:
    """SQLAlchemy's `:name` placeholders as psycopg's `%(name)s` (casts' `::` left alone)."""
    for name in params:
        sql = re.sub(rf"(?<![:\w]):{name}\b", f"%({name})s", sql)
    return sql


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
    import pyarrow as pa
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


def _inline(engine: Engine, sql: str, params: dict[str, Any]) -> str:
    """`sql` with its `:name` parameters as quoted literals (psycopg's client-side binding)."""
    import psycopg

    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        with psycopg.ClientCursor(driver) as cur:
            return cur.mogrify(_bind(sql, params), params)
    finally:
        raw.close()


# 64-bit mixing constants (splitmix64's finaliser).
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(h: Any) -> Any:
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


class KeyDigest:
    """A digest of a set of primary keys, whatever their order: the count, and the sum and xor
    (mod 2^64) of a 64-bit hash of each key, under sha256. Keys are added a batch at a time,
    so a writer keeps three numbers, not the group's ids (an id column kept from a batch read
    through the ADBC driver keeps the whole batch alive). Vectorised: a million keys hash in
    tens of milliseconds, where sorting them took hundreds."""

    def __init__(self) -> None:
        self.count = 0
        self._sum = 0
        self._xor = 0

    def add(self, keys: Any) -> None:
        """`keys`: a pyarrow array (chunked or not; cast to string) or a sequence of str."""
        h = _key_hashes(keys)
        self.count += len(h)
        if len(h):
            self._sum = (self._sum + int(h.sum(dtype=np.uint64))) % (1 << 64)
            self._xor ^= int(np.bitwise_xor.reduce(h))

    def hexdigest(self) -> str:
        return hashlib.sha256(f"{self.count}:{self._sum}:{self._xor}".encode()).hexdigest()


def checksum(keys: Any) -> str:
    """`KeyDigest` of `keys` in one call."""
    digest = KeyDigest()
    digest.add(keys)
    return digest.hexdigest()


def _key_hashes(keys: Any) -> Any:
    import pyarrow as pa

    if not isinstance(keys, pa.Array | pa.ChunkedArray):
        keys = pa.array([str(k) for k in keys], pa.string())
    if isinstance(keys, pa.ChunkedArray):
        # (No chunks: pa.nulls, because combining none, like pa.array([]), imports pandas.)
        keys = keys.combine_chunks() if keys.num_chunks else pa.nulls(0, pa.string())
    keys = keys.cast(pa.string())
    n = len(keys)
    if keys.null_count:
        raise StaveError("an archived table has a row with no primary key")
    offsets = np.frombuffer(keys.buffers()[1], np.int32)[keys.offset : keys.offset + n + 1]
    data = np.frombuffer(keys.buffers()[2] or b"", np.uint8)
    lengths = np.diff(offsets)
    width = int(lengths.max()) if n else 0
    # Each key left-aligned in a row of 8-byte words, its length in the last word.
    words = (width + 7) // 8 + 1
    rows = np.zeros((n, words * 8), np.uint8)
    if n and np.all(lengths == width):
        rows[:, :width] = data[offsets[0] : offsets[-1]].reshape(n, width)
    else:
        for i in range(n):
            rows[i, : lengths[i]] = data[offsets[i] : offsets[i + 1]]
    table = rows.view(np.uint64)
    table[:, -1] = lengths.astype(np.uint64)
    # FNV-style over the words (one xor and one multiply each), then one full mix per key.
    h = np.full(n, 0x9E3779B97F4A7C15, np.uint64)
    for w in range(words):
        h = (h ^ table[:, w]) * _M2
    return _mix(h)


# -- 3. verify ------------------------------------------------------------------------------------
def read_keys(store: ObjectStore, key: str) -> Any:
    """The id column of an archived file, read back from the store (into memory: a file holds
    one group, bounded by the batch size)."""
    import pyarrow as pa
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


# -- 4. commit ------------------------------------------------------------------------------------
def fast_delete_allowed(conn: Connection, policy: LifecyclePolicy) -> bool:
    """Whether a group's rows may be deleted with the row-by-row foreign-key triggers off.

    Only when (1) every foreign key into a member table comes from a member table, so every row
    that could refer to the group is itself counted and deleted; (2) the member tables have no
    triggers of their own (`replica` would silence them too); and (3) this role may set
    `session_replication_role` (a superuser, or a member of stave_archiver: migration 0007)."""
    return group_is_closed(conn, policy) and may_skip_triggers(conn)


def group_is_closed(conn: Connection, policy: LifecyclePolicy) -> bool:
    tables = [m.table for m in members(policy)]
    return bool(
        conn.execute(
            text(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' "
                "  AND confrelid = ANY(CAST(:t AS regclass[])) "
                "  AND NOT conrelid = ANY(CAST(:t AS regclass[]))) "
                "AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE NOT tgisinternal "
                "  AND tgrelid = ANY(CAST(:t AS regclass[])))"
            ),
            {"t": tables},
        ).scalar()
    )


def may_skip_triggers(conn: Connection) -> bool:
    # Parameter privileges (and has_parameter_privilege) arrived in PostgreSQL 15.
    if int(conn.execute(text("SHOW server_version_num")).scalar_one()) < 150000:
        return bool(
            conn.execute(
                text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar()
        )
    return bool(
        conn.execute(
            text("SELECT has_parameter_privilege('session_replication_role', 'SET')")
        ).scalar()
    )


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


# -- recovery of what a crash left ----------------------------------------------------------------
def clean_unfinished(engine: Engine, store: ObjectStore) -> int:
    """Remove the files of groups left `writing` (and audio copies of assets still hot)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, object_key, moved_objects FROM archive_batch WHERE status = 'writing'")
        ).all()
        hot = {
            str(i)
            for i in conn.execute(
                text("SELECT id FROM audio_asset WHERE id = ANY(:ids)"),
                {"ids": [uuid.UUID(m["asset_id"]) for r in rows for m in r.moved_objects]},
            ).scalars()
        }
    for row in rows:
        store.delete(row.object_key)
        store.delete_many([m["to"] for m in row.moved_objects if m["asset_id"] in hot])
    if rows:
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM archive_batch WHERE id = ANY(:ids) AND status = 'writing'"),
                {"ids": [r.id for r in rows]},
            )
    return len(rows)


# -- a whole run ----------------------------------------------------------------------------------
@dataclass
class Plan:
    table: str
    cutoff: datetime
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "cutoff": self.cutoff.isoformat(), "rows": self.rows}


def plan(engine: Engine, older_than_days: int | None, now: datetime | None = None) -> list[Plan]:
    now = now or datetime.now(UTC)
    cutoffs = [(p, cutoff_for(p, older_than_days, now)) for p in archive_roots()]
    with engine.connect() as conn:
        return [Plan(p.table, cut, count_eligible(conn, p, cut)) for p, cut in cutoffs]


@dataclass
class RunResult:
    groups: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    cleaned: int = 0
    moved_objects: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_archive(
    engine: Engine,
    store: ObjectStore,
    tmp_dir: Path,
    *,
    older_than_days: int | None = None,
    batch_size: int = 250_000,
    now: datetime | None = None,
    process: Callable[[LifecyclePolicy, Group], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Archive every root table's old rows, group by group; `process` does one group (write,
    verify, commit: a Prefect task in the flow, a plain call elsewhere)."""
    now = now or datetime.now(UTC)
    with exclusive(engine), contextlib.ExitStack() as stack:
        # One connection reads every group's rows (`process` brings its own way of writing).
        source = stack.enter_context(ArrowSource(engine)) if process is None else None
        return _run(
            engine, store, tmp_dir, older_than_days, batch_size, now, process, progress, source
        )


@contextlib.contextmanager
def exclusive(engine: Engine) -> Iterator[None]:
    """One archive run or restore at a time: a second run would take the first one's files
    for debris, and a restore puts old rows back into the key ranges a run is cutting."""
    with engine.connect() as lock:
        if not lock.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ARCHIVE_LOCK}).scalar():
            raise ArchiveBusy(
                "an archive run or restore is already in progress; wait for it to finish"
            )
        lock.commit()
        try:
            yield
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ARCHIVE_LOCK})
            lock.commit()


def _run(
    engine: Engine,
    store: ObjectStore,
    tmp_dir: Path,
    older_than_days: int | None,
    batch_size: int,
    now: datetime,
    process: Callable[[LifecyclePolicy, Group], None] | None,
    progress: Callable[[int], None] | None,
    source: ArrowSource | None,
) -> RunResult:
    result = RunResult(cleaned=clean_unfinished(engine, store))
    # Decided once per run, not per group: the catalogue and this role's grants do not change.
    with engine.connect() as conn:
        may_skip = may_skip_triggers(conn)
        closed = {p.table: group_is_closed(conn, p) for p in archive_roots()}
        if not may_skip and any(closed.values()):
            log.info(
                "archive: this role may not set session_replication_role, so groups are deleted "
                "with the foreign-key triggers on (row by row, several times slower); grant "
                "stave_archiver to this login"
            )

    def default(policy: LifecyclePolicy, group: Group) -> None:
        write(engine, store, policy, group, tmp_dir, progress, source)
        verify(store, group)
        commit(engine, store, policy, group, fast=may_skip and closed[policy.table])

    run = process or default
    for policy in archive_roots():
        cutoff = cutoff_for(policy, older_than_days, now)
        after = None
        while (group := prepare(engine, policy, cutoff, batch_size, after)) is not None:
            run(policy, group)
            if group.rows is None:  # a key range: every row up to its end is archived
                after = (group.params["hi_ts"], group.params["hi_id"])
            written = group.written.get(policy.table, (0, ""))[0]
            if written == 0 or (group.rows is not None and written != group.rows):
                # Rows chosen but not archived would be chosen again: stop rather than spin.
                chosen = "a key range" if group.rows is None else f"{group.rows} rows"
                raise ArchiveConflict(
                    f"{policy.table}: chose {chosen} but archived {written}; stopping"
                )
            result.groups += 1
            result.moved_objects += len(group.moved)
            for table, (rows, _) in group.written.items():
                result.rows[table] = result.rows.get(table, 0) + rows
    return result


# -- reading the archive ----------------------------------------------------------------------
def list_batches(engine: Engine, table: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, group_id, root_table, table_name, object_key, row_count, checksum, "
                "time_from, time_to, jsonb_array_length(moved_objects) AS moved, created_at, "
                "restored_at FROM archive_batch WHERE status = 'committed' "
                "AND (CAST(:t AS text) IS NULL OR table_name = :t) ORDER BY time_from, table_name"
            ),
            {"t": table},
        ).all()
    return [plain_row(r) for r in rows]


def _download(store: ObjectStore, batches: Sequence[dict[str, Any]], into: Path) -> list[Path]:
    paths = []
    for batch in batches:
        path = into / batch["object_key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for chunk in store.iter_chunks(batch["object_key"]):
                handle.write(chunk)
        paths.append(path)
    return paths


_CLAUSE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(=|==|!=|<>|<=|>=|<|>)\s*(.+?)\s*$", re.I)


def parse_where(where: str | None, schema: Any) -> Any:
    """`col op value [and …]` into a pyarrow.dataset filter; one clear error otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not where or not where.strip():
        return None
    expression = None
    for clause in re.split(r"\s+and\s+", where.strip(), flags=re.I):
        match = _CLAUSE.match(clause)
        if not match:
            raise InvalidInput(f"--where: cannot read {clause!r} (use: column op value [and …])")
        name, op, raw = match.groups()
        if name not in schema.names:
            raise InvalidInput(f"--where: no column {name!r} (columns: {', '.join(schema.names)})")
        kind = schema.field(name).type
        value: Any = raw.strip()
        if value[:1] in "'\"" and value[-1:] == value[:1]:
            value = value[1:-1]
        try:
            if pa.types.is_timestamp(kind):
                parsed = datetime.fromisoformat(value)
                value = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            elif pa.types.is_integer(kind):
                value = int(value)
            elif pa.types.is_floating(kind):
                value = float(value)
            elif pa.types.is_boolean(kind):
                value = value.lower() in ("true", "t", "1", "yes")
        except ValueError as err:
            raise InvalidInput(f"--where: {raw!r} is not a value for {name} ({kind})") from err
        field_ = pc.field(name)
        term = {
            "=": field_ == value,
            "==": field_ == value,
            "!=": field_ != value,
            "<>": field_ != value,
            "<": field_ < value,
            "<=": field_ <= value,
            ">": field_ > value,
            ">=": field_ >= value,
        }[op]
        expression = term if expression is None else expression & term
    return expression


def query(
    engine: Engine,
    store: ObjectStore,
    table: str,
    tmp_dir: Path,
    where: str | None = None,
    columns: Sequence[str] | None = None,
) -> Any:
    """Archived rows of `table` (committed, not restored) as a pyarrow Table, filtered with
    pyarrow.dataset; nothing is restored."""
    import pyarrow.dataset as ds

    known = {m.table for p in archive_roots() for m in members(p)}
    if table not in known:
        raise InvalidInput(f"{table} is not archived by any policy ({', '.join(sorted(known))})")
    batches = [b for b in list_batches(engine, table) if b["restored_at"] is None]
    if not batches:
        raise NotFound(f"nothing of {table} is archived (stave archive list)")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as scratch:
        paths = _download(store, batches, Path(scratch))
        dataset = ds.dataset([str(p) for p in paths], format="parquet")
        return dataset.to_table(
            columns=list(columns) if columns else None, filter=parse_where(where, dataset.schema)
        )


# -- restore --------------------------------------------------------------------------------------
def restore(
    engine: Engine, store: ObjectStore, table: str, year: int, month: int, tmp_dir: Path
) -> dict[str, int]:
    """Put a root table's archived month back (with what travelled with it, and archived
    parents its rows need). Idempotent: rows already present are left as they are."""
    policies = {p.table: p for p in archive_roots()}
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
                path = _download(store, [{"object_key": files[name]}], Path(scratch))[0]
                _restore_parents(engine, store, name, path, Path(scratch), restored)
                restored[name] = restored.get(name, 0) + _insert_file(engine, name, path)
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE archive_batch SET restored_at = now() WHERE group_id = :g"),
                    {"g": group_id},
                )
    return restored


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
    import pyarrow.parquet as pq
    from sqlmodel import SQLModel

    roots = {p.table for p in archive_roots()}
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
            source = _download(store, [batch], scratch)[0]
            rows = pq.read_table(source).to_pylist()
            needed = [r for r in rows if r["id"] in missing]
            if needed:
                _restore_parents(engine, store, parent, source, scratch, restored)
                restored[parent] = restored.get(parent, 0) + _insert_rows(engine, parent, needed)
                missing -= {r["id"] for r in needed}
            if not missing:
                break


def _insert_file(engine: Engine, table: str, path: Path) -> int:
    import pyarrow.parquet as pq

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
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        with driver.cursor() as cur:
            added = 0
            for row in rows:
                cur.execute(sql, row)
                added += max(cur.rowcount, 0)
        driver.commit()
    finally:
        raw.close()
    return added
