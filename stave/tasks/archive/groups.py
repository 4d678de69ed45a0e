"""What a group is: the tables that go together, their columns, and the rows chosen (step 1)."""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from stave.infra.errors import StaveError
from stave.infra.objectstore.keys import archive_key, archived_audio_key, is_archived_key
from stave.models import LifecyclePolicy
from stave.models.base import new_id

# Where a traveller's condition puts the group's own condition on the root.
ROOT = "{root}"
# Column types read in binary, with the pyarrow type each becomes; timestamps are read in
# binary too; everything else (uuid, jsonb, text, …) is kept as the text PostgreSQL prints.
_NUMBERS = {
    "integer": "int32",
    "bigint": "int64",
    "smallint": "int16",
    "double precision": "float64",
    "real": "float32",
    "boolean": "bool_",
}


class ArchiveConflict(StaveError):
    """The rows changed between writing and deleting: nothing was deleted."""


class ArchiveBusy(StaveError):
    """Another archive run holds the lock, or writers kept a group's tables busy."""


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
        if self.sql_type.startswith("vector("):
            return f"{self.name}::real[] AS {self.name}"
        if self.kept_as_text:
            return f"{self.name}::text AS {self.name}"
        return self.name

    @property
    def kept_as_text(self) -> bool:
        t = self.sql_type
        return not t.startswith(("vector(", "timestamp ")) and t not in _NUMBERS

    def arrow_type(self) -> Any:
        import pyarrow as pa  # lazy: off the CLI's start-up path

        t = self.sql_type
        if t.startswith("vector("):
            return pa.list_(pa.float32(), int(t[7:-1]))
        if t in _NUMBERS:
            return getattr(pa, _NUMBERS[t])()
        if t == "timestamp with time zone":
            return pa.timestamp("us", tz="UTC")
        if t == "timestamp without time zone":
            return pa.timestamp("us")
        return pa.string()


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


@dataclass
class Group:
    id: uuid.UUID
    env: str
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
        return archive_key(self.env, table, self.year, self.month, self.files[table])

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
    return f"{condition} AND {policy.leaves_when}" if policy.leaves_when else condition


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
    if policy.leaves_when:
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
    *,
    env_name: str,
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
            env=env_name,
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
                    "to": archived_audio_key(env_name, a.id, a.format),
                    "sha256": a.sha256,
                }
                for a in assets
                if not is_archived_key(a.object_key)
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
