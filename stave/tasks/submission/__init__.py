"""Submitting checked rows: a job, its tasks and the prompt-revision chain, in one transaction.

The file is streamed in chunks of CHUNK_ROWS rows, so memory is flat in its size: each chunk's
rows are checked, merged with their defaults (row > style template > user preferences >
settings; resolve.py), given a seed when the row gives none (so every task records the seed it
will use) and an idempotency key (the row's own, or one derived from the source's sha256, the
row number and its content), looked up, and written with COPY (write.py), with the
foreign-key triggers off where the role may (write.py says why that is safe). All chunks go in
one transaction: a file that fails half way (a format error on line 900,000, the database gone)
leaves nothing behind, and a concurrent reader never sees a partial job.

Rows whose key already exists are not submitted again; a file whose every row exists already
reports the existing job and writes nothing. A key the file itself repeats is rejected at its
second row, near or far (far repeats are found in the database, where the first was written).
Rejections are all counted; the first KEPT_REJECTIONS are kept on the job.
"""

from __future__ import annotations

import gc
import itertools
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from stave.infra.cache import get_cache
from stave.infra.settings import Settings
from stave.models.base import new_id, utcnow
from stave.models.generation import GenerationJob, PromptRevision
from stave.tasks import catalog, queue
from stave.tasks.intake import (
    KEPT_REJECTIONS,
    CheckedRow,
    Rejection,
    Rejections,
    SourceRows,
    checked,
)
from stave.tasks.submission.resolve import Resolver, idempotency_key, settings_defaults
from stave.tasks.submission.write import Planned, Sent, format_chunk, open_batch, send_chunk

# Rows per chunk: at most 4,096 so each chunk's UUIDv7 block stays in one millisecond's
# counter and ids keep increasing from chunk to chunk.
CHUNK_ROWS = 4096
SWITCH_INTERVAL_S = 0.0002


@dataclass
class Submission:
    job_id: uuid.UUID | None
    created: bool
    total: int
    accepted: int
    rejected: list[Rejection] = field(default_factory=list)  # the first KEPT_REJECTIONS
    already_submitted: int = 0
    rejected_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id) if self.job_id else None,
            "created": self.created,
            "total": self.total,
            "accepted": self.accepted,
            "already_submitted": self.already_submitted,
            "rejected": self.rejected_count,
            "rejections": [r.to_dict() for r in self.rejected],
        }


def submit(
    engine: Engine,
    source: SourceRows,
    settings: Settings,
    *,
    submitted_by: str | None = None,
    user_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    priority: str = "standard",
) -> Submission:
    """Check, resolve defaults and write the job (its tasks queued in class `priority`); a
    concurrent duplicate is retried once. `progress(n)` is told of every n rows passed."""
    queue.check_priority(priority)
    for attempt in (1, 2):
        try:
            return _submit_once(engine, source, settings, submitted_by, user_id, progress, priority)
        except (IntegrityError, psycopg.errors.UniqueViolation):
            # Another submission of the same rows committed between our lookup and COPY: the
            # second pass finds its tasks and reports them.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class _NothingNew(Exception):
    """Every row was rejected or is there already: the transaction is rolled back."""

    def __init__(self, submission: Submission) -> None:
        self.submission = submission


def _submit_once(
    engine: Engine,
    source: SourceRows,
    settings: Settings,
    submitted_by: str | None,
    user_id: str | None,
    progress: Callable[[int], None] | None,
    priority: str,
) -> Submission:
    default_user = user_id or settings.default_user
    rejected, sent = Rejections(), Sent()
    job_id, now = new_id(), utcnow()
    try:
        # Two connections: the submission's transaction (job row, COPYs), used by one sending
        # thread while the next chunk is checked and resolved here with catalog lookups on
        # the other (committed configuration only). The database's work on chunk k overlaps
        # Python's on chunk k+1.
        with (
            Session(engine) as session,
            session.begin(),
            engine.connect() as lookups,
            ThreadPoolExecutor(1, thread_name_prefix="stave-submit") as sender,
            _bulk_mode(),
        ):
            batch = open_batch(session.connection(), job_id, now, settings.max_attempts)
            session.execute(
                insert(GenerationJob),
                [
                    {
                        "id": job_id,
                        "submitted_by": submitted_by or default_user,
                        "source_uri": source.uri,
                        "source_sha256": source.sha256,
                        "priority": priority,
                        "created_at": now,
                    }
                ],
            )
            conn = session.connection().connection.driver_connection
            assert conn is not None
            sending: Future[None] | None = None
            try:
                for chunk in _chunks(source, rejected):
                    planned = _plan(
                        lookups, chunk.rows, source.sha256, settings, default_user, rejected
                    )
                    formatted = format_chunk(planned, batch)
                    if sending is not None:
                        sending.result()
                    sending = sender.submit(send_chunk, conn, formatted, batch, sent)
                    if progress is not None:
                        progress(chunk.passed)
                if sending is not None:
                    sending.result()
            finally:
                # The transaction's connection is free before it is committed or rolled back.
                if sending is not None:
                    wait([sending])
            kept = sorted(rejected.kept + sent.rejected.kept, key=lambda r: r.row)
            kept = kept[:KEPT_REJECTIONS]
            count = rejected.count + sent.rejected.count
            if sent.accepted == 0:
                # The job a resubmission repeats: where most of its rows went.
                prior = sent.already.most_common(1)[0][0] if sent.already else None
                raise _NothingNew(
                    Submission(prior, False, source.count, 0, kept, sent.already.total(), count)
                )
            session.execute(
                update(GenerationJob)
                .where(GenerationJob.id == job_id)  # type: ignore[arg-type]
                .values(
                    parameters={
                        "format": source.fmt,
                        "user_id": default_user,
                        "defaults": settings_defaults(settings),
                        "already_submitted": sent.already.total(),
                    },
                    total_rows=source.count,
                    accepted_rows=sent.accepted,
                    rejected_rows=count,
                    rejections=[r.to_dict() for r in kept],
                )
            )
            queue.enqueue_job(session.connection(), job_id, priority)
    except _NothingNew as nothing:
        return nothing.submission
    return Submission(job_id, True, source.count, sent.accepted, kept, sent.already.total(), count)


class _BulkMode:
    """While a submission runs: a shorter GIL switch interval, and the heap frozen.

    The sending thread waits on the database with the GIL released, but needs it back for a
    moment between waits; while this thread checks rows, Python's default 5 ms interval makes
    each such moment cost up to 5 ms (measured: a 100k-row submission took 8.5-9.4 s with it,
    6.2-6.7 s at 0.2 ms). And a chunk's thousands of objects living a little while promote
    into the oldest generation, whose collections then walk everything the process has imported
    (Prefect, pydantic, SQLAlchemy): `gc.freeze()` takes that heap out of collections (the
    submission's own objects are still collected), a fifth to a quarter of the checking's CPU.

    Counted, so that of two submissions overlapping in one process (a worker's two flow runs),
    the first to end does not undo it under the other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._before = sys.getswitchinterval()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._running == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(min(self._before, SWITCH_INTERVAL_S))
                gc.freeze()
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    sys.setswitchinterval(self._before)
                    gc.unfreeze()


_bulk_mode = _BulkMode()


@dataclass
class _Chunk:
    rows: list[CheckedRow]
    passed: int  # rows read, rejected ones included


def _chunks(source: SourceRows, rejected: Rejections) -> Iterator[_Chunk]:
    """The source's checked rows in chunks; rejections go to `rejected` as they come."""
    keys: dict[str, int] = {}  # this chunk's keys: repeats further apart are found in the db
    stream = checked(source.rows(), keys)
    while True:
        rows: list[CheckedRow] = []
        passed = 0
        for item in itertools.islice(stream, CHUNK_ROWS):
            passed += 1
            if isinstance(item, CheckedRow):
                rows.append(item)
            else:
                rejected.add(item)
        if passed == 0:
            return
        keys.clear()
        yield _Chunk(rows, passed)


def _plan(
    lookups: Connection,
    rows: list[CheckedRow],
    source_sha256: str,
    settings: Settings,
    default_user: str,
    rejected: Rejections,
) -> list[Planned]:
    """A chunk's rows merged with their defaults and keyed; a row that cannot be is rejected."""
    if not rows:
        return []
    # Hot configuration through the cache (Redis or an in-process LRU), misses from here.
    cache = get_cache(settings)
    names = {r.style_template for r in rows if r.style_template}
    owners = {r.user_id or default_user for r in rows}
    resolver = Resolver(
        settings,
        catalog.templates(lookups, cache, settings, names),
        catalog.preferences(lookups, cache, settings, owners),
        _parents(lookups, {r.parent_revision for r in rows if r.parent_revision}),
        len(rows),
    )
    planned: list[Planned] = []
    for row in rows:
        owner = row.user_id or default_user
        problem, parameters = resolver.resolve(row, owner)
        if problem is not None:
            rejected.add(Rejection(row.row, problem[0], problem[1], row.line))
            continue
        reused = resolver.revision(row)
        planned.append(
            Planned(
                row,
                owner,
                parameters,
                idempotency_key(row, source_sha256),
                reused.id if reused is not None else None,
                row.parent_revision if reused is None else None,
            )
        )
    return planned


def _parents(lookups: Connection, ids: set[uuid.UUID]) -> dict[uuid.UUID, PromptRevision]:
    if not ids:
        return {}
    found = lookups.execute(select(PromptRevision).where(PromptRevision.id.in_(ids)))  # type: ignore[attr-defined]
    return {r.id: PromptRevision.model_validate(r._mapping) for r in found}
