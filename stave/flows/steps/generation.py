"""The Prefect tasks of bulk generation: submit, claim, generate (and hand over).

Each is one unit of work over a whole batch, so a job's task runs grow with its batches, not its
clips. The logic lives in plain modules (intake, submission, queue, inference, finishing) that
tests and the CLI call directly; these wrappers add what Prefect gives: names in the UI,
retries for transient database trouble, the `gpu` concurrency slot. Finishing a batch (store,
validate, publish) is not a task run here: it runs in the finishing processes
(`tasks/finishing/`), whose work a task run in this process would only slow (each costs the
model's process about 40 ms of Prefect client work). Retries of *clips* are not Prefect
retries: they go through the queue (backoff, attempts, leases), so they survive the worker
process dying.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Generic, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from stave.flows.steps.gpu import gpu_slot
from stave.infra.db import get_engine
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.infra.settings import get_settings
from stave.tasks import (
    finishing,
    inference,
    intake,
    queue,
    submission,
)


@task(name="submit-rows", cache_policy=NO_CACHE)
def submit_rows(
    file_key: str | None,
    rows: list[intake.PromptRow] | None,
    fmt: str | None,
    user_id: str | None,
    submitted_by: str | None,
    priority: str = "standard",
) -> submission.Submission:
    if (file_key is None) == (rows is None):
        raise InvalidInput("give exactly one of file_key, rows or job_id")
    if file_key is not None:
        with intake.read_object(make_object_store(get_settings()), file_key, fmt) as source:
            return _submit(source, user_id, submitted_by, priority)
    source = intake.rows_from_parameter([row.model_dump(exclude_none=True) for row in rows or []])
    return _submit(source, user_id, submitted_by, priority)


def _submit(
    source: intake.SourceRows, user_id: str | None, submitted_by: str | None, priority: str
) -> submission.Submission:
    return submission.submit(
        get_engine(),
        source,
        get_settings(),
        submitted_by=submitted_by,
        user_id=user_id,
        priority=priority,
    )


T = TypeVar("T")


class Parcel(Generic[T]):
    """A value handed from one Prefect task to the flow as one opaque thing.

    Prefect walks every list, tuple, dict and dataclass in a task's parameters and result
    (`visit_collection`, looking for futures and upstream runs). A batch's handoff is deep:
    each clip carries its provenance, so for 64 clips that walk was about a third of the flow's
    CPU with a free model (profiled). A plain class is not walked."""

    __slots__ = ("model_cpu_s", "model_s", "value")

    def __init__(self, value: T, model_s: float = 0.0, model_cpu_s: float = 0.0) -> None:
        self.value = value
        self.model_s = model_s  # seconds the model worked on it (for the GPU's busy ratio)
        self.model_cpu_s = model_cpu_s  # this process's CPU seconds in the model's own code


# Claims are cheap and idempotent to retry: a database restart costs a few seconds, not the job.
@task(name="claim-batch", cache_policy=NO_CACHE, retries=4, retry_delay_seconds=[1, 2, 4, 8])
def claim_batch(worker: str, limit: int, job_id: uuid.UUID | None) -> list[queue.ClaimedTask]:
    settings = get_settings()
    return queue.claim(
        get_engine(), worker, limit, settings.lease_s, job_id, queue.QueuePolicy.of(settings)
    )


# No task tags: in Prefect 3.8 a tag makes every run look up a tag concurrency limit (about
# 2 s per batch here); the `gpu` slot is taken explicitly below instead.
@task(name="generate-batch", cache_policy=NO_CACHE)
def generate_batch(
    claimed: list[queue.ClaimedTask], model_version_id: uuid.UUID, batch_id: str, worker: str
) -> Parcel[finishing.Handoff]:
    """Make the batch, measure it on the device and copy it into shared memory for a
    finishing process."""
    settings = get_settings()
    model = inference.load_model(settings)
    pool = finishing.finishers(settings)
    requests = inference.requests_for(claimed)
    # One slot per GPU: a worker waits here rather than oversubscribing a device.
    with gpu_slot(settings.gpu_concurrency_limit, settings.gpu_slot_lease_s):
        # Where and when the slot was held: kept with each clip's provenance and on its
        # published event, so a fleet's concurrency can be checked after the fact.
        slot = {"host": socket.gethostname(), "pid": os.getpid()}
        slot["from"] = datetime.now(UTC).isoformat()
        started, cpu = time.perf_counter(), time.thread_time()
        batches = finishing.made_batches(model.generator, requests)
        model_s, model_cpu_s = time.perf_counter() - started, time.thread_time() - cpu
        handoff = finishing.pack(
            batches,
            claimed,
            pool=pool,
            model=model,
            batch_id=batch_id,
            worker=worker,
            model_version_id=model_version_id,
            settings=settings,
            slot=slot,
        )
        slot["to"] = datetime.now(UTC).isoformat()
    return Parcel(handoff, model_s, model_cpu_s)
