"""Publishing: asset, embedding, status change and event for a batch in one transaction.

Writes are fenced on the lease: only tasks still held by this worker are settled. A clip whose
task was claimed by another worker meanwhile (this worker's lease expired) is dropped and its
object removed; if the transaction fails, every object the batch wrote is removed, so no object
outlives a failed commit (and `stave gc` sweeps what a crash left).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.engine import Engine

from stave.infra.objectstore.base import ObjectStore
from stave.models.assets import AudioAsset, LatentEmbedding
from stave.models.base import new_id, utcnow
from stave.models.operations import ValidationRun
from stave.tasks.storage import StoredClip, remove_objects
from stave.tasks.validation import Verdict


@dataclass
class Published:
    published: list[uuid.UUID] = field(default_factory=list)
    quarantined: list[uuid.UUID] = field(default_factory=list)
    lost_lease: list[uuid.UUID] = field(default_factory=list)


def publish(
    engine: Engine,
    store: ObjectStore,
    *,
    worker: str,
    job_id: uuid.UUID | None,
    stored: list[StoredClip],
    verdict: Verdict,
    model_version_id: uuid.UUID,
    encoder_version: str,
) -> Published:
    outcome = Published()
    now = utcnow()
    by_task = {clip.task_id: clip for clip in stored}
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(ValidationRun),
                [
                    {
                        "id": new_id(),
                        "suite": "clip_metadata",
                        "job_id": job_id,
                        "batch_id": verdict.batch_id,
                        "success": verdict.success,
                        "statistics": verdict.statistics,
                        "failed_expectations": verdict.failed_expectations,
                        "created_at": now,
                    }
                ],
            )
            settled = conn.execute(
                text(
                    """
                    UPDATE generation_task t
                    SET status = u.status, error_class = u.error_class,
                        error_message = u.error_message, provenance = u.provenance,
                        timings = u.timings, device = u.device, model_version_id = :model,
                        finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
                    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS u(
                        id uuid, status text, error_class text, error_message text,
                        provenance jsonb, timings jsonb, device text)
                    WHERE t.id = u.id AND t.lease_owner = :worker AND t.status = 'running'
                    RETURNING t.id, t.status, t.user_id
                    """
                ),
                {
                    "rows": _settle_rows(stored, verdict),
                    "worker": worker,
                    "model": model_version_id,
                },
            ).all()
            held = {row.id: row for row in settled}
            assets = [_asset(by_task[i], held[i].user_id, model_version_id, now) for i in held]
            if assets:
                conn.execute(insert(AudioAsset), assets)
            embeddings = [
                {
                    "id": new_id(),
                    "asset_id": by_task[i].asset_id,
                    "encoder_version": encoder_version,
                    "embedding": by_task[i].embedding,
                    "created_at": now,
                }
                for i in held
                if held[i].status == "published"
            ]
            if embeddings:
                conn.execute(insert(LatentEmbedding), embeddings)
            conn.execute(
                text(
                    "INSERT INTO task_event (task_id, from_status, to_status, detail, created_at) "
                    "SELECT CAST(e->>'task_id' AS uuid), 'running', e->>'to', e->'detail', now() "
                    "FROM jsonb_array_elements(CAST(:events AS jsonb)) AS e"
                ),
                {"events": json.dumps([_event(by_task[i], held[i].status, verdict) for i in held])},
            )
    except BaseException:
        remove_objects(store, [clip.object_key for clip in stored])
        raise
    for task_id, row in held.items():
        (outcome.published if row.status == "published" else outcome.quarantined).append(task_id)
    outcome.lost_lease = [clip.task_id for clip in stored if clip.task_id not in held]
    remove_objects(store, [by_task[i].object_key for i in outcome.lost_lease])
    return outcome


def _settle_rows(stored: list[StoredClip], verdict: Verdict) -> str:
    rows = []
    for clip in stored:
        failures = verdict.failures.get(clip.task_id)
        rows.append(
            {
                "id": str(clip.task_id),
                "status": "quarantined" if failures else "published",
                "error_class": "validation_failed" if failures else None,
                "error_message": (
                    "failed " + ", ".join(f"{f['expectation']}({f['column']})" for f in failures)
                    if failures
                    else None
                ),
                "provenance": clip.provenance,
                "timings": clip.timings,
                "device": clip.device,
            }
        )
    return json.dumps(rows)


def _asset(clip: StoredClip, user_id: str, model_version_id: uuid.UUID, now: Any) -> dict[str, Any]:
    return {
        "id": clip.asset_id,
        "task_id": clip.task_id,
        "user_id": user_id,
        "model_version_id": model_version_id,
        "object_key": clip.object_key,
        "sha256": clip.sha256,
        "bytes": clip.bytes,
        "format": clip.format,
        "sample_rate": clip.sample_rate,
        "channels": clip.channels,
        "duration_s": clip.duration_s,
        "loudness_lufs": clip.loudness_lufs,
        "loudness_method": clip.loudness_method,
        "peak_dbfs": clip.peak_dbfs,
        "created_at": now,
    }


def _event(clip: StoredClip, status: str, verdict: Verdict) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "asset_id": str(clip.asset_id),
        "object_key": clip.object_key,
        "sha256": clip.sha256,
        "validation_batch": verdict.batch_id,
    }
    if "gpu_slot" in clip.provenance:  # where and when it was generated (flows record it)
        detail["gpu_slot"] = clip.provenance["gpu_slot"]
    if status == "quarantined":
        detail["error_class"] = "validation_failed"
        detail["failed_expectations"] = verdict.failures.get(clip.task_id, [])
    return {"task_id": str(clip.task_id), "to": status, "detail": detail}
