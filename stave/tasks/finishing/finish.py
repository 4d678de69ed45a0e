"""In a finishing process: one handed-off batch stored, validated and published; a job's pages.

The same guarantees as when this ran beside the model: every object of a batch that fails is
removed before the error goes back; publication is one transaction fenced on the lease
(`tasks/publish.py`), so a clip is published once whatever dies where.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.engine import Engine

from stave.infra.db import database_url, make_engine
from stave.infra.objectstore import ObjectStore, make_object_store
from stave.infra.settings import Settings
from stave.tasks import publish, sites, storage, validation
from stave.tasks.classify import classify
from stave.tasks.finishing.handoff import BatchResult, Handoff, PagesRequest, attach


def engine_for(settings: Settings) -> Engine:
    """One pooled engine per database this process finishes batches for."""
    url = database_url(settings)
    found = _engines.get(url)
    if found is None:
        found = _engines[url] = make_engine(url, settings, pool_size=2, max_overflow=2)
    return found


_engines: dict[str, Engine] = {}


def store_for(settings: Settings) -> ObjectStore:
    """The store of the last settings seen, kept while batches keep coming with the same
    (an S3 client and its connection pool per batch would be wasted)."""
    global _last_store
    if _last_store is None or _last_store[0] != settings:
        _last_store = (settings, make_object_store(settings))
    return _last_store[1]


_last_store: tuple[Settings, ObjectStore] | None = None


def finish(handoff: Handoff) -> BatchResult:
    """Store, validate and publish `handoff`'s clips; the outcome, or the error in one line."""
    settings = handoff.settings
    cpu: dict[str, float] = {}
    result = BatchResult(handoff.batch_id, cpu=cpu)
    segment = None
    try:
        segment = attach(handoff.segment)
        store = store_for(settings)
        stored = _store(handoff, segment.buf, store, cpu)
        started = time.thread_time()
        verdict = validation.validate(
            stored, settings, batch_id=handoff.batch_id, sample_rate=handoff.sample_rate
        )
        validated = time.thread_time()
        cpu["validate"] = validated - started
        outcome = publish.publish(
            engine_for(settings),
            store,
            worker=handoff.worker,
            job_id=handoff.job_id,
            stored=stored,
            verdict=verdict,
            model_version_id=handoff.model_version_id,
            encoder_version=handoff.encoder_version,
        )
        cpu["publish"] = time.thread_time() - validated
    except Exception as err:
        result.error = classify(err)
        return result
    finally:
        if segment is not None:
            segment.close()
    result.published = outcome.published
    result.quarantined = outcome.quarantined
    result.lost_lease = outcome.lost_lease
    return result


def _store(
    handoff: Handoff, buffer: Any, store: ObjectStore, cpu: dict[str, float]
) -> list[storage.StoredClip]:
    """Each clip encoded, measured and put; all or nothing (what was put is removed when
    one fails, and anything after it fails too)."""
    samples = handoff.samples(buffer)
    vectors = handoff.embeddings(buffer)
    stored: list[storage.StoredClip] = []
    try:
        for index, clip in enumerate(handoff.clips):
            facts = storage.store_pcm(
                store,
                samples[clip.offset : clip.offset + clip.length],
                handoff.sample_rate,
                clip.object_key,
                loudness=clip.loudness_lufs,
                peak=clip.peak_dbfs,
                cpu=cpu,
            )
            stored.append(
                storage.StoredClip(
                    task_id=clip.task_id,
                    asset_id=clip.asset_id,
                    object_key=clip.object_key,
                    format=storage.AUDIO_FORMAT,
                    requested_duration_s=clip.requested_duration_s,
                    nonfinite_samples=clip.nonfinite_samples,
                    embedding=vectors[index].copy(),  # the segment is reused once published
                    provenance=clip.provenance,
                    timings=clip.timings,
                    device=clip.device,
                    **facts,
                )
            )
    except BaseException:
        storage.remove_objects(store, [clip.object_key for clip in stored])
        raise
    return stored


def build_pages(request: PagesRequest) -> dict[str, Any]:
    """The job's listening page and the Data Docs (what is new of them), put in the store;
    their links and problems, or the Data Docs built locally only."""
    settings = request.settings
    if not request.publish or request.job_id is None:
        validation.build_data_docs(settings)
        if not request.publish:
            return {"data_docs": None, "gallery": None, "clips": 0, "problems": []}
    try:
        if request.job_id is None:
            return sites.publish_data_docs(store_for(settings), settings).to_dict()
        return sites.publish_job_pages(
            engine_for(settings), store_for(settings), settings, request.job_id
        ).to_dict()
    except Exception as err:
        return {"data_docs": None, "gallery": None, "clips": 0, "problems": [classify(err)[1]]}
