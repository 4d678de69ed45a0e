"""A drain's figures: its stats, its progress artifact (with the job's place in the queue
and how busy the GPU has been) and its `drain_run` record; all best effort where the database
restarting must not fail a run over a figure."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from prefect.artifacts import update_progress_artifact
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from stave.flows.steps.gpu import unreachable
from stave.infra.db import translate_db_error
from stave.infra.errors import first_line
from stave.infra.settings import get_settings
from stave.tasks import drain_runs, queue
from stave.tasks.classify import classify

TERMINAL = ("published", "quarantined", "failed", "cancelled")


@dataclass
class DrainStats:
    batches: int = 0
    published: int = 0
    quarantined: int = 0
    failed: int = 0
    retried: int = 0
    lost_lease: int = 0
    handed_back: int = 0
    failed_by_class: dict[str, int] = field(default_factory=dict)  # clips that ended failed
    errors: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    model_s: float = 0.0  # the model's own time (the GPU's busy time)
    model_cpu_s: float = 0.0  # this process's CPU in the model's own code
    wall_s: float = 0.0
    finisher_cpu: dict[str, float] = field(default_factory=dict)  # CPU s by step, summed

    def lap(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - started
        return now

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds by where they went: the model's own code in this process, and each
        finishing step (the finishers' figures, summed over the batches they answered)."""
        spent = {"model (in its process)": round(self.model_cpu_s, 3)}
        spent.update({f"finishers: {k}": round(v, 3) for k, v in self.finisher_cpu.items()})
        return spent

    @property
    def gpu_busy(self) -> float | None:
        """The model's time over the drain's wall: near 1, the GPU is the limit; near 0.2,
        the platform around it is."""
        return round(self.model_s / self.wall_s, 3) if self.wall_s > 0 else None


def started(engine: Engine, worker: str, job_id: uuid.UUID | None, log: Any) -> list[uuid.UUID]:
    """This drain's drain_run row (best effort: a figure for operators must not fail a run)."""
    try:
        return [drain_runs.start(engine, worker, job_id, _flow_run_id())]
    except DBAPIError as err:
        log.warning("drain not recorded: %s", translate_db_error(err) or classify(err)[1])
        return []


def record(
    engine: Engine,
    recorded: list[uuid.UUID],
    stats: DrainStats,
    clips: int,
    log: Any,
    *,
    ended: bool = False,
) -> None:
    for run_id in recorded:
        try:
            drain_runs.update(
                engine,
                run_id,
                batches=stats.batches,
                clips=clips,
                model_s=stats.model_s,
                wall_s=stats.wall_s,
                ended=ended,
            )
        except DBAPIError as err:
            log.warning("drain figures not updated: %s", translate_db_error(err) or err)


def _flow_run_id() -> uuid.UUID | None:
    from prefect.runtime import flow_run

    found = flow_run.get_id()
    return uuid.UUID(str(found)) if found else None


def show(
    progress: Any,
    engine: Engine,
    job_id: uuid.UUID | None,
    total: int,
    done: int,
    stats: DrainStats,
    log: Any,
) -> None:
    """The progress artifact brought up to date, best effort: the database restarting between
    two batches (a failover, a minor upgrade) must not fail the run, and strand the batch just
    made until its lease runs out, over a progress figure; the next batch updates it. Its
    description says how busy the GPU has been."""
    try:
        state = queue.job_state(engine, job_id)
    except DBAPIError as err:
        unavailable = translate_db_error(err)
        if unavailable is None:
            raise
        log.warning("progress not updated: %s", unavailable)
        return
    busy = stats.gpu_busy
    try:
        update_progress_artifact(
            progress,
            percent(state, total, job_id, done),
            description=(
                f"clips settled (job {job_id}{_place(engine, job_id)})"
                if job_id
                else "queued clips processed"
            )
            + (f"; GPU busy {busy:.0%} of the run" if busy is not None else ""),
        )
    except Exception as err:  # the Prefect API away: the next batch's update catches up
        if not unreachable(err):
            raise
        log.warning("progress not updated: the Prefect API is unreachable (%s)", first_line(err))


def _place(engine: Engine, job_id: uuid.UUID) -> str:
    """The job's class, tasks ahead and estimated time, as the progress says them."""
    place = queue.places(engine, queue.QueuePolicy.of(get_settings()), [job_id]).get(job_id)
    if place is None:
        return ""
    if place.ahead is None:
        return f"; {place.priority}, paused"
    eta = f", done in about {place.eta_s / 60:.0f} min" if place.eta_s is not None else ""
    return f"; {place.priority}, {place.ahead} task(s) ahead{eta}"


def percent(state: queue.QueueState, total: int, job_id: uuid.UUID | None, done: int) -> float:
    if job_id is None:
        return min(100.0, 100.0 * done / max(1, total))
    settled = sum(state.counts.get(s, 0) for s in TERMINAL)
    return 100.0 * settled / max(1, total)
