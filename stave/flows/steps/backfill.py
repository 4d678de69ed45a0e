"""The Prefect tasks of latent backfills: one run per batch, plus the index build at the end.

The logic lives in tasks/backfill.py and tasks/vector_index.py (no Prefect there). A batch's
task reads its audio, encodes it holding one slot of the `gpu` limit (only the encoding: the
reads and the write do not need the device), and commits the vectors with the run's cursor.
Retrying a batch is safe: the upsert is idempotent and the cursor update is fenced.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE

from stave.flows.steps.gpu import gpu_slot
from stave.infra.db import get_engine
from stave.infra.objectstore import make_object_store
from stave.infra.settings import get_settings
from stave.tasks import backfill, vector_index
from stave.tasks.encoders import StaveEncoder, load_encoder


def _encoder(spec: tuple[str, str | None]) -> StaveEncoder:
    # The model is cached per process (tasks/inference.py): this costs nothing after the first.
    return load_encoder(get_engine(), get_settings(), spec[0], spec[1])


@task(name="backfill-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 8])
def backfill_batch(
    encoder: tuple[str, str | None],
    run: backfill.Run,
    refs: Sequence[backfill.AssetRef],
    expected_cursor: tuple[datetime, UUID] | None,
) -> backfill.BatchResult:
    """One batch: `encoder` is (encoder version, checkpoint path or None)."""
    settings = get_settings()
    return backfill.process_batch(
        get_engine(),
        make_object_store(settings),
        _encoder(encoder),
        run,
        refs,
        expected_cursor,
        settings.backfill_fetch_threads,
        device_slot=gpu_slot(settings.gpu_concurrency_limit, settings.gpu_slot_lease_s),
        window=settings.backfill_window,
    )


@task(name="estimate-backfill", cache_policy=NO_CACHE)
def estimate(encoder: tuple[str, str | None], scope: backfill.Scope, sample: int) -> dict[str, Any]:
    settings = get_settings()
    return backfill.estimate(
        get_engine(),
        make_object_store(settings),
        _encoder(encoder),
        scope,
        sample,
        settings.backfill_fetch_threads,
    )


@task(name="build-vector-index", cache_policy=NO_CACHE)
def build_index(encoder_version: str) -> dict[str, Any]:
    settings = get_settings()
    engine = get_engine()
    with engine.connect() as conn:
        existing = vector_index.index_for(conn, encoder_version)
    if existing is not None:
        return {"index": existing.name, "built": False}
    try:
        built = vector_index.rebuild(engine, encoder_version, settings)
    except vector_index.IndexPrivilegeError as err:
        return {"index": None, "built": False, "warning": str(err)}
    return {"index": built.name, "built": True}
