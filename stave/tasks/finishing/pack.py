"""In the model's process: a claimed batch made, measured on its device, copied once into
shared memory, and described for a finisher (ARCHITECTURE.md, "Processes on a GPU host").

What the device does for the whole batch at once, it does here: the 16-bit samples, the
count of non-finite samples and, on a GPU, each clip's peak and loudness
(`generator/levels.py`). On the CPU the finisher measures loudness and peak from the samples,
as the CPU would either way. Object keys are made here, from new asset ids, so the model's
process knows every key a finisher may write: a finisher that dies leaves no orphan.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from stave.infra.objectstore.keys import audio_key
from stave.infra.settings import Settings
from stave.models.base import new_id
from stave.tasks import inference
from stave.tasks.finishing.handoff import ClipSlot, Handoff, layout
from stave.tasks.finishing.pool import FinisherPool
from stave.tasks.queue import ClaimedTask
from stave.tasks.storage import AUDIO_FORMAT, quantize


def made_batches(generator: Any, requests: Sequence[Any]) -> list[Any]:
    """The requests made, batch by batch, left on the device (`StaveGenerator`); a generator
    that only returns clips (ACE-Step's adapter) has each clip made a batch of its own."""
    if hasattr(generator, "generate_batches"):
        return list(generator.generate_batches(requests))
    from stave.generator.pipeline import MadeBatch  # torch

    return [
        MadeBatch.of_clip(clip, position)
        for position, clip in enumerate(generator.generate(requests))
    ]


def pack(
    batches: list[Any],
    claimed: list[ClaimedTask],
    *,
    pool: FinisherPool,
    model: inference.LoadedModel,
    batch_id: str,
    worker: str,
    model_version_id: uuid.UUID,
    settings: Settings,
    slot: dict[str, Any],
) -> Handoff:
    """Measure each made batch on its device and copy its samples and embeddings into one
    segment of `pool`'s; the message that tells a finisher what is where. `slot` (where and
    when the `gpu` slot was held) joins each clip's provenance."""
    rows = [int(batch.audio.shape[0] * batch.audio.shape[1]) for batch in batches]
    clips_count = sum(len(batch.members) for batch in batches)
    samples_bytes, total = layout(rows, clips_count)
    segment = pool.segment(total)
    try:
        slots = _fill(
            batches, claimed, segment, samples_bytes, model, model_version_id, settings, slot
        )
    except BaseException:
        pool.release(segment.name)
        raise
    return Handoff(
        batch_id=batch_id,
        worker=worker,
        job_id=claimed[0].job_id,
        model_version_id=model_version_id,
        encoder_version=model.encoder_version,
        sample_rate=batches[0].sample_rate,
        segment=segment.name,
        embeddings_at=samples_bytes,
        clips=slots,
        settings=settings,
    )


def _fill(
    batches: list[Any],
    claimed: list[ClaimedTask],
    segment: SharedMemory,
    samples_bytes: int,
    model: inference.LoadedModel,
    model_version_id: uuid.UUID,
    settings: Settings,
    slot: dict[str, Any],
) -> list[ClipSlot]:
    from stave.generator import levels  # torch

    clips_count = sum(len(batch.members) for batch in batches)
    samples = np.ndarray((samples_bytes // 2,), dtype=np.int16, buffer=segment.buf)
    vectors = np.ndarray(
        (clips_count, 512), dtype=np.float32, buffer=segment.buf, offset=samples_bytes
    )
    slots: list[ClipSlot] = []
    offset = 0
    for batch in batches:
        audio, lengths = batch.audio, batch.lengths
        width = audio.shape[1]
        block = samples[offset : offset + audio.numel()]
        peaks: list[float | None] = [None] * len(lengths)
        loudness: list[float | None] = [None] * len(lengths)
        if batch.levels is not None:
            # Measured on the device with the batch: one copy of its samples to shared memory.
            nonfinite = batch.levels.nonfinite
            peaks = list(batch.levels.peaks_dbfs)
            loudness = list(batch.levels.loudness_lufs)
            levels.copy_to_host(batch.levels.pcm, block)
        else:
            # Made on the CPU: numpy quantizes a row at a time straight into shared memory
            # (several times faster than torch's elementwise kernels there); the finisher
            # measures loudness and peak from the samples.
            rows = audio.numpy().reshape(len(lengths), width)
            nonfinite = [
                int(np.count_nonzero(~np.isfinite(row[:n])))
                for row, n in zip(rows, lengths, strict=True)
            ]
            for row, n in enumerate(lengths):
                block[row * width : row * width + n] = quantize(rows[row, :n])
        levels.copy_to_host(batch.embeddings, vectors[len(slots) : len(slots) + len(lengths)])
        records = inference.provenances(batch, model, model_version_id)
        for row, position in enumerate(batch.positions):
            task = claimed[position]
            asset_id = new_id()
            slots.append(
                ClipSlot(
                    task_id=task.id,
                    asset_id=asset_id,
                    object_key=audio_key(settings.env, asset_id, AUDIO_FORMAT),
                    offset=offset + row * width,
                    length=lengths[row],
                    requested_duration_s=float(batch.requests[row].duration_s),
                    nonfinite_samples=nonfinite[row],
                    loudness_lufs=loudness[row],
                    peak_dbfs=peaks[row],
                    provenance={**records[row], "gpu_slot": slot},
                    timings=dict(batch.timings),
                    device=batch.device,
                )
            )
        offset += audio.numel()
    return slots
