"""Writing a chunk of a submission: its revisions, tasks and events sent with COPY on the
submission's own connection (inside its one transaction).

Rows are formatted as COPY text here rather than by psycopg's `write_row` (a third of the
submission's CPU at a million rows): the values are strings, numbers and JSON, and only four
characters need escaping. Formatting happens on the thread that reads the file; the thread
that sends does nothing but wait on the database, so the two overlap.

A chunk is sent optimistically, under a savepoint, without looking its keys up first (a
fresh file, the bulk case, pays no lookup): the unique index on the idempotency key refuses a
chunk holding a key that exists (a resubmission, a key the file repeats chunks apart, a
concurrent submission of the same rows, once it commits); the chunk is then rolled back to
its savepoint, its keys are looked up, and only its new rows are sent again; after a chunk
that met existing keys, the next is looked up first (a resubmission pays one lookup per chunk,
not a refused COPY).

Where the role may (`Batch.triggers_off`), the transaction runs with
`session_replication_role = replica`: PostgreSQL's foreign-key triggers, one query and, for a
row written in this transaction, one row lock with its WAL record per row and reference, were a
third of the database's work. Every reference is kept by construction instead: tasks point at
this transaction's job and at revisions sent before them, events at tasks sent before them,
and the only rows from outside, the existing revisions a chunk reuses or edits, are locked
`FOR KEY SHARE` here, as the trigger would; one that has gone meanwhile sends its chunk with
the triggers on, so PostgreSQL refuses it in its own words.

PostgreSQL refuses COPY into a table with row-level security to a role subject to it (the app's
logins, stave_app: not the owner, not a superuser): for such a role the revisions and tasks are
copied into temporary tables of the same shape and moved with one INSERT ... SELECT per chunk,
which the tables' policies check as they check any insert.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Connection

from stave.infra.roles import may_skip_triggers
from stave.models.base import new_id_block
from stave.tasks.intake import CheckedRow, Rejection, Rejections

log = logging.getLogger(__name__)

TASK_COLUMNS = (
    "id, job_id, user_id, prompt_revision_id, prompt, lyrics, parameters, idempotency_key, "
    "status, attempts, max_attempts, created_at"
)
REVISION_COLUMNS = "id, user_id, parent_id, prompt, lyrics, created_at"
EVENT_COLUMNS = "task_id, from_status, to_status, detail, created_at"
# (table, columns) in the order a chunk is sent: what is referred to before what refers to it.
TABLES = (
    ("prompt_revision", REVISION_COLUMNS),
    ("generation_task", TASK_COLUMNS),
    ("task_event", EVENT_COLUMNS),
)
STAGE = "stave_stage_"  # + table: the temporary tables of a role subject to row-level security
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_SPECIAL = re.compile(r"[\\\t\n\r]")
NULL = "\\N"


def copy_text(value: str | None) -> str:
    """A value in COPY's text format (a search first: most values need no escape, and
    translate costs seven times as much)."""
    if value is None:
        return NULL
    return value if _SPECIAL.search(value) is None else value.translate(_ESCAPES)


def ids(n: int) -> list[str]:
    """n UUIDv7s as 32 hex digits (PostgreSQL reads them as uuid), made in one block."""
    hexed = new_id_block(n).tobytes().hex()
    return [hexed[i : i + 32] for i in range(0, 32 * n, 32)]


@dataclass
class Planned:
    """A row ready to be a task: its owner, merged parameters, key and revision."""

    row: CheckedRow
    owner: str
    parameters: dict[str, Any]
    key: str
    revision: uuid.UUID | None  # the unchanged parent it reuses; None: a new revision
    parent: uuid.UUID | None  # the revision a new one edits


@dataclass(frozen=True)
class Batch:
    """Where a submission's rows go: its job, its one timestamp, tasks' attempts, whether its
    transaction runs with the foreign-key triggers off, and the tables it copies through a
    temporary table (row-level security)."""

    job_id: uuid.UUID
    now: datetime
    max_attempts: int
    triggers_off: bool = False
    staged: frozenset[str] = frozenset()


def open_batch(connection: Connection, job_id: uuid.UUID, now: datetime, attempts: int) -> Batch:
    """The submission's transaction made ready for its chunks: the foreign-key triggers off
    where the role may (migration 0011) and the tables have no triggers of their own, and
    temporary tables for those the role may not COPY into (before any chunk's savepoint, which
    would take them away on a rollback)."""
    tables = [table for table, _ in TABLES]
    triggers_off = may_skip_triggers(connection, tables)
    if triggers_off:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
    elif not _told_triggers_on.is_set():
        _told_triggers_on.set()
        log.info(
            "submission: this role may not set session_replication_role, so rows are written "
            "with a foreign-key trigger each (slower); run migration 0011 as a superuser, or "
            "GRANT SET ON PARAMETER session_replication_role TO stave_app"
        )
    staged = frozenset(
        table
        for table in tables
        if connection.execute(text("SELECT row_security_active(:t)"), {"t": table}).scalar()
    )
    for table, columns in TABLES:
        if table in staged:  # the copied columns only, without their constraints
            connection.execute(
                text(
                    f"CREATE TEMP TABLE {STAGE}{table} ON COMMIT DROP AS "
                    f"SELECT {columns} FROM {table} WITH NO DATA"
                )
            )
    return Batch(job_id, now, attempts, triggers_off, staged)


_told_triggers_on = threading.Event()  # said once per process


@dataclass
class Chunk:
    """A chunk's rows and their COPY text, one block per table."""

    planned: list[Planned]
    revisions: str
    tasks: str
    events: str


def format_chunk(planned: list[Planned], batch: Batch) -> Chunk:
    job, at, job_text = batch.job_id.hex, batch.now.isoformat(), str(batch.job_id)
    task_ids = ids(len(planned))
    revision_ids = iter(ids(sum(1 for p in planned if p.revision is None)))
    revisions: list[str] = []
    tasks: list[str] = []
    events: list[str] = []
    for task_id, item in zip(task_ids, planned, strict=True):
        owner, prompt = copy_text(item.owner), copy_text(item.row.prompt)
        lyrics = copy_text(item.row.lyrics)
        if item.revision is None:
            revision = next(revision_ids)
            parent = NULL if item.parent is None else item.parent.hex
            revisions.append(f"{revision}\t{owner}\t{parent}\t{prompt}\t{lyrics}\t{at}\n")
        else:
            revision = item.revision.hex
        parameters = copy_text(orjson.dumps(item.parameters).decode())
        tasks.append(
            f"{task_id}\t{job}\t{owner}\t{revision}\t{prompt}\t{lyrics}\t{parameters}\t"
            f"{copy_text(item.key)}\tpending\t0\t{batch.max_attempts}\t{at}\n"
        )
        events.append(
            f'{task_id}\t{NULL}\tpending\t{{"job_id": "{job_text}", "row": {item.row.row}}}\t{at}\n'
        )
    return Chunk(planned, "".join(revisions), "".join(tasks), "".join(events))


@dataclass
class Sent:
    """What the chunks sent so far came to (kept by the one thread that sends)."""

    accepted: int = 0
    already: Counter[uuid.UUID] = field(default_factory=Counter)  # job -> rows found there
    rejected: Rejections = field(default_factory=Rejections)  # keys the file repeats
    look_first: bool = False  # the last chunk looked up found keys that exist


def send_chunk(conn: psycopg.Connection[Any], chunk: Chunk, batch: Batch, sent: Sent) -> None:
    """The chunk's new rows written: revisions first (tasks point at them), then the tasks,
    then each task's creation event."""
    if not chunk.planned:
        return
    with conn.cursor() as cur:
        if sent.look_first:
            # The last chunk met existing keys (a resubmission, most likely): look up first
            # rather than pay for a COPY that will be refused.
            chunk = _fresh_only(conn, chunk, batch, sent)
            _copy(cur, chunk, batch)
        else:
            cur.execute("SAVEPOINT stave_chunk")
            try:
                _copy(cur, chunk, batch)
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT stave_chunk")
                chunk = _fresh_only(conn, chunk, batch, sent)
                _copy(cur, chunk, batch)
            cur.execute("RELEASE SAVEPOINT stave_chunk")
    sent.accepted += len(chunk.planned)


def _copy(cur: psycopg.Cursor[Any], chunk: Chunk, batch: Batch) -> None:
    if not chunk.planned:
        return
    checked = batch.triggers_off and not _outside_references_held(cur, chunk)
    if checked:
        cur.execute("SET LOCAL session_replication_role = origin")
    for (table, columns), rows in zip(
        TABLES, (chunk.revisions, chunk.tasks, chunk.events), strict=True
    ):
        if not rows:
            continue
        into = f"{STAGE}{table}" if table in batch.staged else table
        with cur.copy(f"COPY {into} ({columns}) FROM STDIN") as copy:
            copy.write(rows)
        if into != table:
            cur.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {into}")
            cur.execute(f"TRUNCATE {into}")
    if checked:
        cur.execute("SET LOCAL session_replication_role = replica")


def _outside_references_held(cur: psycopg.Cursor[Any], chunk: Chunk) -> bool:
    """The existing revisions the chunk's rows reuse or edit, locked as a foreign-key check
    locks them (none may go before this transaction ends); False if one has gone already."""
    outside = {p.revision for p in chunk.planned if p.revision is not None}
    outside |= {p.parent for p in chunk.planned if p.parent is not None}
    if not outside:
        return True
    cur.execute("SELECT id FROM prompt_revision WHERE id = ANY(%s) FOR KEY SHARE", (list(outside),))
    return len(cur.fetchall()) == len(outside)


def _fresh_only(conn: psycopg.Connection[Any], chunk: Chunk, batch: Batch, sent: Sent) -> Chunk:
    """The chunk less the rows whose key a task holds already: another job's (counted as
    already submitted) or this one's (a key the file repeats: rejected, naming the first row)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT t.idempotency_key, t.job_id, (e.detail->>'row')::int "
            "FROM generation_task t LEFT JOIN task_event e "
            "ON t.job_id = %(job)s AND e.task_id = t.id AND e.from_status IS NULL "
            "WHERE t.idempotency_key = ANY(%(keys)s)",
            {"keys": [p.key for p in chunk.planned], "job": batch.job_id},
        )
        found = {key: (job, row) for key, job, row in cur}
    sent.look_first = bool(found)
    fresh: list[Planned] = []
    for item in chunk.planned:
        hit = found.get(item.key)
        if hit is None:
            fresh.append(item)
        elif hit[0] == batch.job_id:
            sent.rejected.add(
                Rejection(
                    item.row.row, "idempotency_key", f"repeats row {hit[1]}'s key", item.row.line
                )
            )
        else:
            sent.already[hit[0]] += 1
    return format_chunk(fresh, batch)
