"""The drain: claim batches and make them until nothing is left to claim (for one job, or all).

Each batch: claim (SKIP LOCKED, leased) → generate (the `gpu` slot; measured on the device and
copied into shared memory) → handed to a finishing process, which stores, validates and
publishes it (`tasks/finishing/`) while this process makes the next. This process, the one
that drives the GPU, does only that: no other thread of it runs Python while the model works
(ARCHITECTURE.md, "Processes on a GPU host"). At most `in_flight` batches are with the
finishers; the drain waits for room before it claims another. A failure is classified and
recorded on the batch's tasks, and retryable classes come back after a backoff; a finisher
that dies with a batch fails it (`internal`, retried) and its objects are removed. A stop
(Ctrl-C, SIGTERM) claims no new batch, hands back the one being made and those no finisher
has taken yet, and waits for the ones being finished.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from prefect.artifacts import (
    create_progress_artifact,
)
from sqlalchemy.exc import DBAPIError

from stave.flows.logs import run_logger
from stave.flows.steps import generation, gpu
from stave.flows.steps import progress as progress_
from stave.flows.steps.gpu import OrchestratorUnavailable
from stave.flows.steps.progress import DrainStats
from stave.generator.errors import Interrupted
from stave.infra import stop
from stave.infra.db import get_engine, translate_db_error
from stave.infra.objectstore import make_object_store
from stave.infra.settings import get_settings
from stave.tasks import finishing, inference, queue, storage, vector_index
from stave.tasks.classify import classify


def worker_id() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def drain(
    job_id: uuid.UUID | None, *, wait_for_running: bool, limit: int | None = None
) -> DrainStats:
    """Claim and process batches until nothing is left to claim (for one job, or all)."""
    stop.reclaim()  # a CLI-run flow stops on SIGTERM as on Ctrl-C
    began = time.perf_counter()
    settings = get_settings()
    engine = get_engine()
    log = run_logger("stave.flows.generate")
    worker = worker_id()
    stats = DrainStats()
    start = queue.job_state(engine, job_id)
    total = sum(start.counts.values()) if job_id else max(1, start.open)
    progress: Any = create_progress_artifact(
        progress=progress_.percent(start, total, job_id, 0),
        key=f"generation-progress-{job_id}" if job_id else "generation-progress",
        description=f"clips settled (job {job_id})" if job_id else "queued clips processed",
    )
    model: inference.LoadedModel | None = None
    pool: finishing.FinisherPool | None = None
    model_version_id = uuid.UUID(int=0)
    processed = 0
    handed: dict[str, _Batch] = {}  # with the finishers, by batch id
    recorded: list[uuid.UUID] = []  # this drain's drain_run row, once it makes a batch
    # Keys of clips a dead finisher may have been putting: removed when it died, and again
    # at the end (a put still in flight when it died can land after the first removal).
    stale: list[str] = []

    def settle(finished: list[finishing.Finished]) -> None:
        for done in finished:
            request = done.request
            if isinstance(request, finishing.Handoff) and request.batch_id in handed:
                stale.extend(handed.pop(request.batch_id).settle(done.answer, worker, stats, log))
        if finished:
            stats.wall_s = time.perf_counter() - began
            progress_.show(progress, engine, job_id, total, processed, stats, log)
            progress_.record(engine, recorded, stats, processed, log)

    failed = True
    try:
        while limit is None or processed < limit:
            if pool is not None:
                lap = time.perf_counter()
                settle(pool.wait_for_room(stop.requested))
                stats.lap("wait for finishers", lap)
            if stop.requested():
                # Ctrl-C or SIGTERM: no new batch; those handed over are settled below.
                log.warning("stop requested: no new batch is claimed")
                break
            if model is None:
                size = settings.batch_size or 8
            else:
                size = settings.batch_size or model.batch_size(settings.default_duration_s)
            take = size if limit is None else min(size, limit - processed)
            lap = time.perf_counter()
            claimed = generation.claim_batch(worker, take, job_id)
            stats.lap("claim", lap)
            if not claimed:
                if pool is not None and pool.in_flight:
                    lap = time.perf_counter()
                    settle(pool.poll(None))  # its outcome (a retry) may give the queue work
                    stats.lap("wait for finishers", lap)
                    continue
                state = queue.job_state(engine, job_id)
                waiting = state.counts.get("pending", 0) + (
                    state.counts.get("running", 0) if wait_for_running else 0
                )
                if waiting == 0 or state.next_due is None:
                    break
                # Retries wait out their backoff; a dead worker's tasks wait out its lease.
                time.sleep(min(max(queue.seconds_until(state.next_due), 0.2), 5.0))
                continue
            if model is None:
                # Loaded on the first claim, so an empty queue costs no model load; kept after.
                # The finishers start first: they import while the model loads.
                pool = finishing.finishers(settings)
                model = inference.load_model(settings)
                if hasattr(model.generator, "interrupt"):
                    model.generator.interrupt = stop.requested
                model_version_id = inference.register_model_version(engine, model)
                warning = vector_index.ensure_index_once(engine, model.encoder_version, settings)
                if warning:
                    log.warning(warning)
                recorded.extend(progress_.started(engine, worker, job_id, log))
            assert pool is not None
            stats.batches += 1
            processed += len(claimed)
            batch = _Batch(claimed, model_version_id)
            lap = time.perf_counter()
            try:
                made = batch.generate(worker, stats, log)
            except OrchestratorUnavailable:
                stats.batches -= 1
                processed -= len(claimed)
                if not gpu.wait_for_api(stop.requested, log):
                    break
                continue
            finally:
                stats.lap("generate", lap)
            if made is not None:
                stats.model_s += made.model_s
                stats.model_cpu_s += made.model_cpu_s
                batch.handoff = made.value
                handed[batch.batch_id] = batch
                pool.submit(made.value)
            settle(pool.poll(0.0))
        failed = False
    finally:
        if pool is not None:
            # Batches no finisher has taken go back to the queue now on a stop (or an error
            # here); those being finished are waited for, so their outcome is recorded.
            if stop.requested() or failed:
                for handoff in pool.revoke():
                    if handoff.batch_id in handed:
                        handed.pop(handoff.batch_id).hand_back(worker, stats, log)
            lap = time.perf_counter()
            settle(pool.wait_all())
            stats.lap("wait for finishers", lap)
            if stale:
                left = storage.remove_objects(make_object_store(settings), stale)
                if left:
                    log.warning("%d object(s) left for `stave gc`: %s", len(left), left[0])
        stats.wall_s = time.perf_counter() - began
        progress_.record(engine, recorded, stats, processed, log, ended=True)
    return stats


# Seconds between tries of a write that gives a batch back, while the database is unavailable:
# a restart (a failover, a minor upgrade) takes seconds; 15 s in all stays inside a task lease
# and a worker's stop grace. (Claims retry the same way, as Prefect task retries.)
DATABASE_RETRY_S = (1.0, 2.0, 4.0, 8.0)
_T = TypeVar("_T")


def _riding_out_a_restart(write: Callable[[], _T], log: Any) -> _T:
    """`write()`, tried again while the database is unavailable (up to DATABASE_RETRY_S): a
    batch that failed, or was stopped, as the database restarted goes back to the queue now
    rather than after its lease, and its run does not fail over the moment."""
    for pause in DATABASE_RETRY_S:
        try:
            return write()
        except DBAPIError as err:
            unavailable = translate_db_error(err)
            if unavailable is None:
                raise
            log.warning("%s; trying again in %g s", unavailable, pause)
            time.sleep(pause)
    return write()


class _Batch:
    """One claimed batch: made in this process, then finished by a finishing process."""

    def __init__(self, claimed: list[queue.ClaimedTask], model_version_id: uuid.UUID) -> None:
        self.claimed = claimed
        self.ids = [t.id for t in claimed]
        self.job_id = claimed[0].job_id
        self.model_version_id = model_version_id
        self.batch_id = f"{self.job_id}-{uuid.uuid4().hex[:8]}"
        self.started = time.perf_counter()
        self.handoff: finishing.Handoff | None = None

    def generate(
        self, worker: str, stats: DrainStats, log: Any
    ) -> generation.Parcel[finishing.Handoff] | None:
        try:
            return generation.generate_batch(
                self.claimed, self.model_version_id, self.batch_id, worker
            )
        except Interrupted:
            # Stopped mid-batch: the tasks go back to the queue now, not after the lease.
            self.hand_back(worker, stats, log)
            return None
        except OrchestratorUnavailable as err:
            # Nothing ran: the batch must not pay an attempt for an outage of Prefect's.
            self.hand_back(worker, stats, log, reason=str(err))
            raise
        except Exception as err:
            self.record_failure(*classify(err), worker, stats, log)
            return None

    def hand_back(
        self, worker: str, stats: DrainStats, log: Any, reason: str = "stop requested"
    ) -> None:
        stats.handed_back += _riding_out_a_restart(
            lambda: queue.release(get_engine(), worker, self.ids, reason), log
        )
        log.warning("batch %s handed back: %s", self.batch_id, reason)

    def settle(
        self, result: finishing.BatchResult, worker: str, stats: DrainStats, log: Any
    ) -> list[str]:
        """The outcome recorded; the keys of any objects a dead finisher may have left."""
        for step, spent in result.cpu.items():
            stats.finisher_cpu[step] = stats.finisher_cpu.get(step, 0.0) + spent
        if result.error is not None:
            statuses = self.record_failure(*result.error, worker, stats, log)
            if result.died and self.handoff is not None:
                # The finisher may have put some of the batch's objects: those of clips not
                # published (its transaction, if cut short, rolled back) are removed.
                keys = {c.task_id: c.object_key for c in self.handoff.clips}
                stale = [keys[task] for task in statuses if task in keys]
                storage.remove_objects(make_object_store(self.handoff.settings), stale)
                return stale
            return []
        stats.published += len(result.published)
        stats.quarantined += len(result.quarantined)
        stats.lost_lease += len(result.lost_lease)
        log.info(
            "batch %s: %d published, %d quarantined in %.2f s",
            self.batch_id,
            len(result.published),
            len(result.quarantined),
            time.perf_counter() - self.started,
        )
        if result.quarantined:
            log.warning("batch %s: %d clip(s) quarantined", self.batch_id, len(result.quarantined))
        return []

    def record_failure(
        self, error_class: str, message: str, worker: str, stats: DrainStats, log: Any
    ) -> dict[uuid.UUID, str]:
        stats.errors[error_class] = stats.errors.get(error_class, 0) + len(self.ids)
        log.warning("batch %s failed (%s): %s", self.batch_id, error_class, message)
        try:
            statuses = _riding_out_a_restart(
                lambda: queue.fail(
                    get_engine(),
                    worker,
                    self.ids,
                    error_class,
                    message,
                    backoff_s=get_settings().retry_backoff_s,
                    detail={"batch": self.batch_id},
                ),
                log,
            )
        except Exception as again:  # the database itself is gone: the leases will expire
            log.error(
                "could not record the failure of batch %s: %s", self.batch_id, classify(again)[1]
            )
            raise
        ended = sum(1 for s in statuses.values() if s == "failed")
        stats.failed += ended
        if ended:
            stats.failed_by_class[error_class] = stats.failed_by_class.get(error_class, 0) + ended
        stats.retried += sum(1 for s in statuses.values() if s == "pending")
        return statuses
