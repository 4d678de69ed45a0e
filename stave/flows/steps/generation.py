"""The Prefect tasks of bulk generation: submit, claim, generate, finish (store, validate,
publish).

Each is one unit of work over a whole batch, so a job's task runs grow with its batches, not its
clips. The logic lives in plain modules (intake, submission, queue, inference, storage,
validation, publish) that tests and the CLI call directly; these wrappers add what Prefect
gives: names in the UI, retries for transient database trouble, the `gpu` concurrency slot.
Retries of *clips* are not Prefect retries: they go through the queue (backoff, attempts,
leases), so they survive the worker process dying.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from stave.flows.steps.gpu import gpu_slot
from stave.infra.db import get_engine
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.infra.settings import get_settings
from stave.tasks import (
    inference,
    intake,
    publish,
    queue,
    sites,
    storage,
    submission,
    validation,
)


@task(name="submit-rows", cache_policy=NO_CACHE)
def submit_rows(
    file_key: str | None,
    rows: list[intake.PromptRow] | None,
    fmt: str | None,
    user_id: str | None,
    submitted_by: str | None,
) -> submission.Submission:
    if (file_key is None) == (rows is None):
        raise InvalidInput("give exactly one of file_key, rows or job_id")
    if file_key is not None:
        with intake.read_object(make_object_store(get_settings()), file_key, fmt) as source:
            return _submit(source, user_id, submitted_by)
    source = intake.rows_from_parameter([row.model_dump(exclude_none=True) for row in rows or []])
    return _submit(source, user_id, submitted_by)


def _submit(
    source: intake.SourceRows, user_id: str | None, submitted_by: str | None
) -> submission.Submission:
    return submission.submit(
        get_engine(), source, get_settings(), submitted_by=submitted_by, user_id=user_id
    )


T = TypeVar("T")
Made = tuple[uuid.UUID, Any, dict[str, Any]]  # (task id, clip, provenance)


class Parcel(Generic[T]):
    """A batch's clips handed from one Prefect task to the next as one opaque value.

    Prefect walks every list, tuple, dict and dataclass in a task's parameters and result
    (`visit_collection`, looking for futures and upstream runs). A batch's clips are deep:
    each carries its provenance and the batch's every request (for exact replay), so for 64
    clips that walk was about a third of the flow's CPU with a free model (profiled). A plain
    class is not walked."""

    __slots__ = ("items",)

    def __init__(self, items: list[T]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)


# Claims are cheap and idempotent to retry: a database restart costs a few seconds, not the job.
@task(name="claim-batch", cache_policy=NO_CACHE, retries=4, retry_delay_seconds=[1, 2, 4, 8])
def claim_batch(worker: str, limit: int, job_id: uuid.UUID | None) -> list[queue.ClaimedTask]:
    return queue.claim(get_engine(), worker, limit, get_settings().lease_s, job_id)


# No task tags: in Prefect 3.8 a tag makes every run look up a tag concurrency limit (about
# 2 s per batch here); the `gpu` slot is taken explicitly below instead.
@task(name="generate-batch", cache_policy=NO_CACHE)
def generate_batch(claimed: list[queue.ClaimedTask], model_version_id: uuid.UUID) -> Parcel[Made]:
    settings = get_settings()
    model = inference.load_model(settings)
    requests = inference.requests_for(claimed)
    # One slot per GPU: a worker waits here rather than oversubscribing a device.
    with gpu_slot(settings.gpu_concurrency_limit, settings.lease_s):
        held_from = datetime.now(UTC).isoformat()
        clips = model.generator.generate(requests)
        # Where and when the slot was held: kept with each clip's provenance and on its
        # published event, so a fleet's concurrency can be checked after the fact.
        slot = {"host": socket.gethostname(), "pid": os.getpid(), "from": held_from}
        slot["to"] = datetime.now(UTC).isoformat()
    return Parcel(
        [
            (t.id, clip, {**record, "gpu_slot": slot})
            for t, clip, record in zip(
                claimed, clips, inference.provenances(clips, model, model_version_id), strict=True
            )
        ]
    )


# Storing, validating and publishing a batch are one task run: each task run costs the Prefect
# server and client about 40 ms of CPU (task run, state changes, inputs), which at a GPU's pace
# (a batch every half second) is worth saving; the batch's stages are timed in its event.
@task(name="finish-batch", cache_policy=NO_CACHE)
def finish_batch(
    made: Parcel[Made],
    batch_id: str,
    worker: str,
    job_id: uuid.UUID | None,
    model_version_id: uuid.UUID,
    encoder_version: str,
) -> publish.Published:
    """FLAC, measure and put each clip; the Great Expectations suite over the batch; then
    publish what passed and quarantine what did not, in one transaction."""
    settings = get_settings()
    store = make_object_store(settings)
    stored = storage.store_clips(store, made.items, env_name=settings.env)
    verdict = validation.validate(
        stored, settings, batch_id=batch_id, sample_rate=made.items[0][1].sample_rate
    )
    return publish.publish(
        get_engine(),
        store,
        worker=worker,
        job_id=job_id,
        stored=stored,
        verdict=verdict,
        model_version_id=model_version_id,
        encoder_version=encoder_version,
    )


@task(name="build-data-docs", cache_policy=NO_CACHE)
def build_data_docs() -> str:
    settings = get_settings()
    validation.build_data_docs(settings)
    return str(settings.data_docs_dir / "index.html")


@task(name="publish-pages", cache_policy=NO_CACHE)
def publish_pages(job_id: uuid.UUID) -> sites.JobPages:
    """The job's listening page and the Data Docs (built meanwhile), to the object store."""
    settings = get_settings()
    return sites.publish_job_pages(get_engine(), make_object_store(settings), settings, job_id)
