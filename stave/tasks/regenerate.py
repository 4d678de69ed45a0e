"""Regenerating a clip from its task record alone, and checking the bytes match.

The record names the checkpoint (verified by sha256), the request, the seed actually used, the
device and dtype. On the same checkpoint, device type and dtype the built-in model is
deterministic, so the FLAC comes out byte-identical; a different device is allowed but reported,
since bf16 on CUDA and float32 on the CPU do not make the same samples.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, NotFound
from stave.models.base import parse_id
from stave.tasks.storage import encode_flac


@dataclass
class Regenerated:
    task_id: uuid.UUID
    sha256: str
    recorded_sha256: str | None
    size: int
    device: str
    recorded_device: str | None
    data: bytes

    @property
    def matches(self) -> bool:
        return self.recorded_sha256 is not None and self.sha256 == self.recorded_sha256

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": str(self.task_id),
            "sha256": self.sha256,
            "recorded_sha256": self.recorded_sha256,
            "matches": self.matches,
            "bytes": self.size,
            "device": self.device,
            "recorded_device": self.recorded_device,
        }


def checkpoint_path(uri: str) -> Path | None:
    """The local checkpoint a provenance record names (None: the packaged one)."""
    if uri.startswith("package:"):
        return None
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    raise InvalidInput(f"checkpoint {uri!r} is not a local file; fetch it and pass --checkpoint")


def _member(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": record["prompt"],
        "duration_s": record["audio_duration"],
        "guidance": record["guidance_scale"],
        "seed": record["actual_seeds"][0],
    }


def _members(engine: Engine, ident: uuid.UUID, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The requests of the batch a clip was made in, from the tasks that share its key, in
    their places (two batches of one key made the same requests: either serves)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT ON (position) position, provenance FROM ("
                "  SELECT (provenance -> 'batch' ->> 'position')::int AS position, provenance"
                "  FROM generation_task WHERE provenance -> 'batch' ->> 'key' = :key) AS m "
                "ORDER BY position"
            ),
            {"key": batch["key"]},
        ).all()
    found = {row.position: _member(row.provenance) for row in rows}
    missing = [i for i in range(int(batch["size"])) if i not in found]
    if missing:
        raise InvalidInput(
            f"task {ident} was made in a batch of {batch['size']}; the tasks at place(s) "
            f"{', '.join(map(str, missing[:5]))} of it are gone (archived or deleted), so the "
            "batch cannot be replayed"
        )
    return [found[i] for i in range(int(batch["size"]))]


def regenerate(
    engine: Engine,
    task_id: str | uuid.UUID,
    *,
    device: str | None = None,
    checkpoint: Path | None = None,
) -> Regenerated:
    from stave.generator.pipeline import GenerationRequest, StaveGenerator  # torch

    ident = parse_id(task_id, "task")
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT t.provenance, t.status, a.sha256 FROM generation_task t "
                "LEFT JOIN audio_asset a ON a.task_id = t.id WHERE t.id = :id"
            ),
            {"id": ident},
        ).one_or_none()
    if row is None:
        raise NotFound(f"no task {ident}")
    record: dict[str, Any] = row.provenance or {}
    if not record:
        raise InvalidInput(f"task {ident} is {row.status} and has no generation record yet")
    if record.get("model_name") != "stave-small":
        raise InvalidInput(
            f"task {ident} was made by {record.get('model_name')!r}; only the built-in model "
            "regenerates here"
        )
    path = checkpoint or checkpoint_path(record["checkpoint_uri"])
    recorded_device = record.get("device")
    target = device or ("cuda" if str(recorded_device).startswith("cuda") else "cpu")
    generator = StaveGenerator.load(
        path, device=target, expected_sha256=record["checkpoint_sha256"]
    )
    batch = record.get("batch") or {"position": 0, "members": [_member(record)]}
    if "members" not in batch:  # records since the batch key: the members are their own tasks
        batch = {"position": batch["position"], "members": _members(engine, ident, batch)}
    requests = [
        GenerationRequest(
            prompt=str(member["prompt"]),
            duration_s=float(member["duration_s"]),
            steps=int(record["infer_step"]),
            guidance=float(member["guidance"]),
            scheduler=str(record["scheduler_type"]),
            seed=int(member["seed"]),
        )
        for member in batch["members"]
    ]
    clip = generator.run_batch(requests)[int(batch["position"])]
    data = encode_flac(clip.audio, clip.sample_rate)
    return Regenerated(
        task_id=ident,
        sha256=hashlib.sha256(data).hexdigest(),
        recorded_sha256=row.sha256,
        size=len(data),
        device=clip.device,
        recorded_device=recorded_device,
        data=data,
    )
