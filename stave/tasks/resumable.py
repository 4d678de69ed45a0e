"""Resumable keyset-cursor runs: long work over a table, walked in `(created_at, id)` order a
page at a time, that can be killed at any point and resumed with no gap and no duplicate.

What every such run needs, written once:
- a **run record**: a row in a run table (`RunTable`: the columns of `backfill_run`, keyed by
  what the run is for and a digest of its scope); at most one unfinished run per key and
  scope, which the next invocation takes over;
- the **cursor**, advanced on the record in the same transaction as a page's own writes and
  fenced on the cursor the page started from (`RunTable.checkpoint`): a page committed twice
  (a retry whose first reply was lost) is counted once;
- a **lock** per key and scope, so a second runner is told at once rather than racing;
- `drive`, the loop: pages until none is left or a limit is reached, progress, and the run's
  final status (`completed`, or `stopped` for the next invocation to resume).

The latent backfill (tasks/backfill/) is built on it; a maintenance run over assets (say,
recomputing a measurement) brings its own run table, page query and page processing.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.infra import stop
from stave.infra.errors import StaveError
from stave.infra.locks import advisory_lock
from stave.models.base import new_id

Cursor = tuple[datetime, uuid.UUID]
MAX_RECORDED_FAILURES = 1000


class RunBusy(StaveError):
    """Another process is running this run now."""


@dataclass
class Run:
    """A run record as one invocation sees it when it starts."""

    id: uuid.UUID
    key: str
    upper_bound: datetime
    cursor: Cursor | None
    planned: int
    written: int
    failed: int
    batches: int
    resumed: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cursor"] = [self.cursor[0].isoformat(), str(self.cursor[1])] if self.cursor else None
        return out


@dataclass(frozen=True)
class RunTable:
    """A table of run records: `key_column` names what a run is for (the backfill's encoder
    version); `scope` is a digest of the filters that say which rows belong to it."""

    name: str
    key_column: str

    @property
    def _columns(self) -> str:
        return (
            f"id, {self.key_column} AS key, upper_bound, cursor_created_at, cursor_id, planned, "
            "written, failed, batches"
        )

    def find_open(self, conn: Connection, key: str, scope: str) -> Run | None:
        row = conn.execute(
            text(
                f"SELECT {self._columns} FROM {self.name} WHERE {self.key_column} = :k "
                "AND scope = :s AND status <> 'completed'"
            ),
            {"k": key, "s": scope},
        ).first()
        return _run(row, resumed=True) if row else None

    def open(
        self,
        engine: Engine,
        key: str,
        scope: str,
        params: dict[str, Any],
        *,
        upper_bound: Callable[[Connection], datetime],
        planned: Callable[[Connection, datetime], int],
    ) -> Run:
        """The unfinished run for (key, scope), taken over (it resumes from its cursor), or a
        new one ending at `upper_bound` with `planned` rows to do."""
        with engine.begin() as conn:
            row = conn.execute(
                text(
                    f"UPDATE {self.name} SET status = 'running', updated_at = now(), error = NULL "
                    f"WHERE {self.key_column} = :k AND scope = :s AND status <> 'completed' "
                    f"RETURNING {self._columns}"
                ),
                {"k": key, "s": scope},
            ).first()
            if row is not None:
                return _run(row, resumed=True)
            upper = upper_bound(conn)
            row = conn.execute(
                text(
                    f"INSERT INTO {self.name} (id, {self.key_column}, scope, params, upper_bound, "
                    "status, planned, written, failed, batches, failures, stats, created_at, "
                    "updated_at) VALUES (:id, :k, :s, CAST(:params AS jsonb), :upper, 'running', "
                    ":planned, 0, 0, 0, '[]', '{}', now(), now()) "
                    f"RETURNING {self._columns}"
                ),
                {
                    "id": new_id(),
                    "k": key,
                    "s": scope,
                    "params": json.dumps(params),
                    "upper": upper,
                    "planned": planned(conn, upper),
                },
            ).one()
        return _run(row, resumed=False)

    def checkpoint(
        self,
        cur: psycopg.Cursor[Any],
        run: Run,
        expected: Cursor | None,
        new: Cursor,
        written: int,
        failures: Sequence[dict[str, str]],
    ) -> bool:
        """Advance the run's cursor inside the caller's transaction (on psycopg cursor `cur`,
        beside the page's writes). False when the cursor had already moved: an earlier
        attempt of this page committed, and the caller must roll back."""
        cur.execute(
            f"UPDATE {self.name} SET cursor_created_at = %(at)s, cursor_id = %(id)s, "
            "written = written + %(w)s, failed = failed + %(f)s, batches = batches + 1, "
            "failures = CASE WHEN jsonb_array_length(failures) < %(cap)s "
            "THEN failures || %(new)s::jsonb ELSE failures END, updated_at = now() "
            "WHERE id = %(run)s AND cursor_id IS NOT DISTINCT FROM %(prev_id)s",
            {
                "at": new[0],
                "id": new[1],
                "w": written,
                "f": len(failures),
                "cap": MAX_RECORDED_FAILURES,
                "new": json.dumps(list(failures)),
                "run": run.id,
                "prev_id": expected[1] if expected else None,
            },
        )
        return cur.rowcount == 1

    def finish(
        self,
        engine: Engine,
        run_id: uuid.UUID,
        status: str,
        error: str | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        with engine.begin() as conn:
            conn.execute(
                text(
                    f"UPDATE {self.name} SET status = :st, error = :err, updated_at = now(), "
                    "stats = COALESCE(CAST(:stats AS jsonb), stats), "
                    "finished_at = CASE WHEN :done THEN now() END WHERE id = :id"
                ),
                {
                    "st": status,
                    "err": error,
                    "id": run_id,
                    "done": status == "completed",
                    "stats": json.dumps(stats) if stats is not None else None,
                },
            )

    def latest(self, engine: Engine, key: str, scope: str) -> dict[str, Any] | None:
        """The newest run's counters for (key, scope), for a progress bar polling them."""
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    f"SELECT id, status, planned, written, failed FROM {self.name} "
                    f"WHERE {self.key_column} = :k AND scope = :s "
                    "ORDER BY updated_at DESC LIMIT 1"
                ),
                {"k": key, "s": scope},
            ).first()
        return dict(row._mapping) if row else None


def _run(row: Any, resumed: bool) -> Run:
    cursor = (row.cursor_created_at, row.cursor_id) if row.cursor_id else None
    return Run(
        id=row.id,
        key=row.key,
        upper_bound=row.upper_bound,
        cursor=cursor,
        planned=row.planned,
        written=row.written,
        failed=row.failed,
        batches=row.batches,
        resumed=resumed,
    )


# -- the loop -----------------------------------------------------------------------------------
class Keyed(Protocol):
    """A row a run walks past: its place in `(created_at, id)` order."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def created_at(self) -> datetime: ...


class PageOutcome(Protocol):
    """What processing one page did."""

    @property
    def written(self) -> int: ...

    @property
    def failures(self) -> list[dict[str, str]]: ...

    @property
    def abandoned(self) -> bool:
        """A stop was asked mid-page: nothing of it was written, the cursor stays."""
        ...

    def seconds(self) -> dict[str, float]: ...


@dataclass
class Progress:
    """Counters of one invocation, shared with whoever reports progress."""

    planned: int = 0
    done_before: int = 0
    written: int = 0
    failed: int = 0
    batches: int = 0
    failed_by: dict[str, int] = field(default_factory=dict)  # error class -> rows
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, summed over pages
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: PageOutcome) -> None:
        with self.lock:
            self.written += outcome.written
            self.failed += len(outcome.failures)
            for failure in outcome.failures:
                kind = failure.get("error_class", "internal")
                self.failed_by[kind] = self.failed_by.get(kind, 0) + 1
            self.batches += 1
            for stage, spent in outcome.seconds().items():
                self.seconds[stage] = self.seconds.get(stage, 0.0) + spent

    @property
    def fraction(self) -> float:
        total = self.done_before + self.planned
        done = self.done_before + self.written + self.failed
        return 1.0 if total == 0 else min(1.0, done / total)

    def stats(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "written": self.written,
            "failed": self.failed,
            "batches": self.batches,
        }
        out.update({f"{stage}_s": round(spent, 3) for stage, spent in self.seconds.items()})
        return out


@dataclass(frozen=True)
class Walk:
    """One run's functions: how its pages are found and what is done with each."""

    # (run, cursor, how many) -> the next rows past the cursor, in (created_at, id) order
    next_page: Callable[[Run, Cursor | None, int], Sequence[Keyed]]
    # (run, the page, the cursor it starts from) -> what it did (committed with the cursor)
    process: Callable[[Run, Sequence[Any], Cursor | None], PageOutcome]


def drive(
    engine: Engine,
    table: RunTable,
    run: Run,
    walk: Walk,
    page_size: int,
    limit: int | None = None,
    on_progress: Callable[[Run, Progress], None] | None = None,
) -> tuple[Progress, str]:
    """Process `run`'s pages until none is left or `limit` rows are done. Returns this
    invocation's progress and the run's final status: `completed`, or `stopped` when the
    limit or a stop request (Ctrl-C, SIGTERM: infra/stop.py) ended it; the next invocation
    resumes. A failure marks the run `stopped` with the error, then propagates."""
    progress = Progress(planned=run.planned - run.written - run.failed)
    progress.done_before = run.written + run.failed
    cursor = run.cursor
    status = "completed"
    try:
        while True:
            size = page_size
            if limit is not None:
                size = min(size, limit - progress.written - progress.failed)
                if size <= 0:
                    # The limit may land exactly on the last row: only an empty page says
                    # the run is done.
                    status = "stopped" if walk.next_page(run, cursor, 1) else "completed"
                    break
            if stop.requested():
                status = "stopped"
                break
            page = walk.next_page(run, cursor, size)
            if not page:
                break
            outcome = walk.process(run, page, cursor)
            if outcome.abandoned:
                status = "stopped"
                break
            progress.add(outcome)
            cursor = (page[-1].created_at, page[-1].id)
            if on_progress is not None:
                on_progress(run, progress)
    except BaseException as err:
        table.finish(engine, run.id, "stopped", f"{type(err).__name__}: {err}"[:2000])
        raise
    table.finish(engine, run.id, status, stats=progress.stats())
    return progress, status


@contextmanager
def exclusive(engine: Engine, name: str, busy: StaveError) -> Iterator[None]:
    """Hold the run's lock for as long as it works; `busy` is raised when another process
    holds it. A crashed runner's lock goes with its connection."""
    with engine.connect() as conn, advisory_lock(conn, name, busy=busy):
        yield
