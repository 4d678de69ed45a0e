"""Evaluation independent of the model: generate for held-out prompts, measure with analysis.py.

- key_accuracy: share of clips whose chroma-estimated key equals the prompt's key.
- tempo_accuracy: share within ±5% of the prompt's tempo (octave errors count as wrong).
- sounds_alike_precision_at_10: for held-out corpus clips, the share of their 10 nearest
  neighbours (cosine, among the other held-out clips) that share their timbre label.
- rtf: seconds of audio per second of wall time, 10-second clips, batch 8, default steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from stave.generator.analysis import estimate_key, estimate_tempo, tempo_matches
from stave.generator.corpus import ClipLabels, prompt_for, render, sample_labels
from stave.generator.pipeline import GenerationRequest, StaveGenerator

HELD_OUT_BASE = 900_000_000  # corpus seeds at or above this are never trained on
Progress = Callable[[str], None]


def held_out(count: int, offset: int = 0) -> list[ClipLabels]:
    return [sample_labels(HELD_OUT_BASE + offset + i) for i in range(count)]


def evaluate(
    generator: StaveGenerator, *, quick: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    note = progress or (lambda _msg: None)
    n_generated, n_gallery = (16, 80) if quick else (96, 300)
    labels = held_out(n_generated)
    requests = [
        GenerationRequest(prompt_for(lab), duration_s=10.0, seed=i) for i, lab in enumerate(labels)
    ]
    note(f"generating {len(requests)} held-out clips")
    clips = generator.generate(requests)
    keys = [estimate_key(c.audio, c.sample_rate) for c in clips]
    key_accuracy = np.mean(
        [k == (lab.tonic, lab.mode) for k, lab in zip(keys, labels, strict=True)]
    )
    tempos = [estimate_tempo(c.audio, c.sample_rate) for c in clips]
    tempo_accuracy = np.mean(
        [tempo_matches(t, lab.bpm) for t, lab in zip(tempos, labels, strict=True)]
    )
    note(f"embedding {n_gallery} held-out corpus clips")
    precision = sounds_alike_precision(generator, held_out(n_gallery, offset=50_000))
    note("timing a batch of 8 ten-second clips")
    return {
        "key_accuracy": round(float(key_accuracy), 4),
        "tempo_accuracy": round(float(tempo_accuracy), 4),
        "sounds_alike_precision_at_10": round(precision, 4),
        "rtf": round(real_time_factor(generator), 2),
        "device": str(generator.device),
        "dtype": str(generator.dtype).removeprefix("torch."),
        "clips": len(clips),
        "quick": quick,
        "checkpoint_sha256": generator.sha256,
    }


def sounds_alike_precision(
    generator: StaveGenerator, labels: list[ClipLabels], k: int = 10
) -> float:
    vectors = np.stack([generator.embed_audio(render(lab, 6.0)[0], 16_000) for lab in labels])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    timbres = np.array([lab.timbre for lab in labels])
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    return float((timbres[nearest] == timbres[:, None]).mean())


def real_time_factor(generator: StaveGenerator, clips: int = 8, seconds: float = 10.0) -> float:
    requests = [
        GenerationRequest(prompt_for(lab), duration_s=seconds, seed=i)
        for i, lab in enumerate(held_out(clips, offset=90_000))
    ]
    generator.generate(requests[:1])  # warm-up: first calls allocate and pick kernels
    started = time.perf_counter()
    generator.generate(requests)
    return clips * seconds / (time.perf_counter() - started)
