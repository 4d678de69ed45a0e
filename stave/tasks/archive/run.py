"""A whole archival run: every archive table's old rows, group by group, one run at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from stave.infra.locks import advisory_lock
from stave.infra.objectstore import ObjectStore
from stave.models import LifecyclePolicy, archive_policies
from stave.tasks.archive.groups import (
    ArchiveBusy,
    ArchiveConflict,
    Group,
    count_eligible,
    cutoff_for,
    prepare,
)
from stave.tasks.archive.recovery import clean_unfinished
from stave.tasks.archive.steps import RunContext, arrow_source, fast_deletes, process_group

ARCHIVE_LOCK = "stave/archive"

# One group processed: process_group itself, or the flow's Prefect task around it. Returns the
# rows and digest written per table.
GroupFn = Callable[[LifecyclePolicy, Group, RunContext], dict[str, tuple[int, str]]]


@dataclass
class Plan:
    table: str
    cutoff: datetime
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "cutoff": self.cutoff.isoformat(), "rows": self.rows}


def plan(engine: Engine, older_than_days: int | None, now: datetime | None = None) -> list[Plan]:
    now = now or datetime.now(UTC)
    cutoffs = [(p, cutoff_for(p, older_than_days, now)) for p in archive_policies()]
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
    process: GroupFn | None = None,
    progress: Callable[[int], None] | None = None,
    env_name: str,
) -> RunResult:
    """Archive every root table's old rows, group by group. Each group goes through
    `process_group` with the run's context; `process` wraps that call (the flow's Prefect
    task) and `progress` hears of root rows as they are written (the CLI's bar)."""
    now = now or datetime.now(UTC)
    with exclusive(engine), arrow_source(engine) as source:
        # Decided once per run, not per group: the catalogue and this role's grants do not
        # change; one connection reads every group's rows.
        context = RunContext(tmp_dir, source, fast_deletes(engine))
        result = RunResult(cleaned=clean_unfinished(engine, store))
        for policy in archive_policies():
            cutoff = cutoff_for(policy, older_than_days, now)
            after = None
            while (
                group := prepare(engine, policy, cutoff, batch_size, after, env_name=env_name)
            ) is not None:
                if process is None:
                    process_group(engine, store, policy, group, context, progress)
                else:
                    # Prefect may hand the task a copy of the group: take what it wrote.
                    group.written = process(policy, group, context)
                if group.rows is None:  # a key range: every row up to its end is archived
                    after = (group.params["hi_ts"], group.params["hi_id"])
                _count(result, policy, group)
    return result


def _count(result: RunResult, policy: LifecyclePolicy, group: Group) -> None:
    written = group.written.get(policy.table, (0, ""))[0]
    if written == 0 or (group.rows is not None and written != group.rows):
        # Rows chosen but not archived would be chosen again: stop rather than spin.
        chosen = "a key range" if group.rows is None else f"{group.rows} rows"
        raise ArchiveConflict(f"{policy.table}: chose {chosen} but archived {written}; stopping")
    result.groups += 1
    result.moved_objects += len(group.moved)
    for table, (rows, _) in group.written.items():
        result.rows[table] = result.rows.get(table, 0) + rows


@contextmanager
def exclusive(engine: Engine) -> Iterator[None]:
    """One archive run or restore at a time: a second run would take the first one's files
    for debris, and a restore puts old rows back into the key ranges a run is cutting."""
    busy = ArchiveBusy("an archive run or restore is already in progress; wait for it to finish")
    with engine.connect() as conn, advisory_lock(conn, ARCHIVE_LOCK, busy=busy):
        yield
