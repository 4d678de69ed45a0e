"""A stand-in for the model, for benchmarks that measure what surrounds it.

`install(settings, seconds_per_batch)` loads the real model once (so model versions, encoder
versions and provenance are the real ones) and swaps its generator for one that returns real
clips made once up front, after sleeping `seconds_per_batch`: time a GPU would take, using no
CPU. Each returned clip carries its own request and seed, and its audio is scaled by a factor
unique to the request, so every clip has its own bytes (and checksum) as real ones would.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any


class StandInGenerator:
    def __init__(self, real: Any, seconds_per_batch: float, templates: Sequence[Any]) -> None:
        self.real = real
        self.seconds_per_batch = seconds_per_batch
        self.templates = list(templates)
        self.interrupt: Callable[[], bool] | None = None
        self.frame_rate = real.frame_rate

    def batch_size(self, frames: int) -> int:
        return int(self.real.batch_size(frames))

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        from stave.generator.errors import Interrupted

        deadline = time.monotonic() + self.seconds_per_batch
        while time.monotonic() < deadline:  # simulated device time: no CPU used
            if self.interrupt is not None and self.interrupt():
                raise Interrupted("stop requested")
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        made = []
        for position, request in enumerate(requests):
            template = self.templates[position % len(self.templates)]
            seed = request.seed if request.seed is not None else position
            # A per-request gain in [0.90, 0.99]: distinct bytes, the same loudness class.
            gain = 0.90 + (zlib.crc32(f"{request.prompt}|{seed}".encode()) % 1000) / 11_100
            made.append(
                dataclasses.replace(
                    template,
                    audio=template.audio * gain,
                    request=dataclasses.replace(request, seed=seed),
                    seed=seed,
                    batch=tuple(requests),
                    batch_position=position,
                )
            )
        return made


def install(settings: Any, seconds_per_batch: float, duration_s: float) -> Any:
    """Swap the process's loaded model's generator for the stand-in; returns the model."""
    from stave.generator.pipeline import GenerationRequest
    from stave.tasks import inference

    model = inference.load_model(settings)
    real = model.generator
    templates = real.generate(
        [
            GenerationRequest(
                prompt=f"stand-in template {i}", duration_s=duration_s, steps=2, seed=i
            )
            for i in range(8)
        ]
    )
    model.generator = StandInGenerator(real, seconds_per_batch, templates)
    return model
