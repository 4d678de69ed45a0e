"""A backfill's run record (`backfill_run`), its lock, opened and finished: the resumable run
machinery of tasks/resumable.py with the encoder version as the run's key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from stave.tasks import resumable
from stave.tasks.backfill.pages import count_in, new_upper_bound
from stave.tasks.backfill.scope import Scope
from stave.tasks.resumable import Run, RunBusy

RUNS = resumable.RunTable("backfill_run", key_column="encoder_version")


class BackfillBusy(RunBusy):
    """Another process is running this backfill now."""


def find_open_run(conn: Connection, scope: Scope) -> Run | None:
    return RUNS.find_open(conn, scope.encoder_version, scope.digest)


@contextmanager
def exclusive(engine: Engine, scope: Scope) -> Iterator[None]:
    """Hold the run's advisory lock for as long as it works: a second runner of the same
    backfill is told so, and a crashed runner's lock goes with its connection."""
    busy = BackfillBusy(
        f"a backfill for encoder {scope.encoder_version} over this range is already "
        "running in another process; wait for it or cancel it"
    )
    name = f"stave/backfill/{scope.encoder_version}/{scope.digest}"
    with resumable.exclusive(engine, name, busy):
        yield


def open_run(engine: Engine, scope: Scope) -> Run:
    """The scope's unfinished run, taken over (it resumes from its cursor), or a new one."""
    return RUNS.open(
        engine,
        scope.encoder_version,
        scope.digest,
        {**scope.params(), "model_version": scope.model_version},
        upper_bound=lambda conn: new_upper_bound(conn, scope),
        planned=lambda conn, upper: count_in(conn, scope, upper, None),
    )


def finish_run(engine: Engine, run_id: uuid.UUID, status: str, error: str | None = None) -> None:
    RUNS.finish(engine, run_id, status, error)


def count_pending(engine: Engine, scope: Scope) -> tuple[int, Run | None, datetime]:
    """Assets the scope still lacks, from where an unfinished run stopped (if there is one),
    with the upper bound the count used."""
    with engine.connect() as conn:
        run = find_open_run(conn, scope)
        upper = run.upper_bound if run else new_upper_bound(conn, scope)
        return count_in(conn, scope, upper, run.cursor if run else None), run, upper
