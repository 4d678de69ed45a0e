"""A stand-in for the model, for benchmarks that measure what surrounds it.

`install(settings, seconds_per_batch, duration_s, driver=...)` loads the real model once (so
model versions, encoder versions and provenance are the real ones) and swaps its generator for
one that returns real clips made once up front by the real model, after spending the batch's
device time in one of two ways:

- `driver="sleep"`: a sleep, using no CPU and never taking the GIL: what a GPU's time would
  be if driving it cost nothing (the platform's ceiling);
- `driver="torch"`: a loop of tiny torch calls, as a thread that drives a GPU makes (each
  gives up the GIL and takes it back), calibrated to take `seconds_per_batch` alone. Inside
  the flow it takes longer by as much as the rest of the process, and the machine, get in its
  way: `StandInGenerator.driving_s` sums its time, so a benchmark can set it beside the
  calibrated time (bench/starvation.py).

Each returned clip carries its own request and seed, and its audio is scaled by a factor
unique to the request, so every clip has its own bytes (and checksum) as real ones would.
Batches come back as `MadeBatch`es on the CPU, the way the real generator leaves them on its
device; `generate` gives the host clips of the same.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

# Elements of the tensor each tiny call works on: a kernel launch's worth of host work.
_TINY = 64


def drive(calls: int) -> float:
    """`calls` tiny torch calls in a row (a GPU driver's loop); seconds taken."""
    x = torch.ones(_TINY)
    started = time.perf_counter()
    for _ in range(calls):
        x = torch.add(x, 1e-3)
    return time.perf_counter() - started


def calibrate(seconds: float, rounds: int = 5) -> tuple[int, float]:
    """(calls, seconds alone): how many tiny calls take about `seconds` on this machine with
    nothing else running, and the median time of that many over `rounds` tries."""
    drive(10_000)  # warm
    per_call = min(drive(20_000) for _ in range(3)) / 20_000
    calls = max(1, int(seconds / per_call))
    times = sorted(drive(calls) for _ in range(rounds))
    return calls, times[len(times) // 2]


class StandInGenerator:
    def __init__(
        self, real: Any, seconds_per_batch: float, templates: Sequence[Any], calls: int = 0
    ) -> None:
        self.real = real
        self.seconds_per_batch = seconds_per_batch
        self.templates = list(templates)
        self.calls = calls  # tiny torch calls per batch (0: sleep instead)
        self.interrupt: Callable[[], bool] | None = None
        self.frame_rate = real.frame_rate
        self.driving_s: list[float] = []  # each batch's device time as spent in the flow
        from stave.generator.analysis import loudness_lufs
        from stave.tasks.storage import quantize

        self.loudness = {
            id(t): loudness_lufs(quantize(t.audio).astype(np.float32) / 32768, t.sample_rate)
            for t in self.templates
        }

    def batch_size(self, frames: int) -> int:
        return int(self.real.batch_size(frames))

    def _device_time(self) -> None:
        from stave.generator.errors import Interrupted

        if self.calls:
            self.driving_s.append(drive(self.calls))
            return
        deadline = time.monotonic() + self.seconds_per_batch
        while time.monotonic() < deadline:  # simulated device time: no CPU used
            if self.interrupt is not None and self.interrupt():
                raise Interrupted("stop requested")
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def generate_batches(self, requests: Sequence[Any]) -> list[Any]:
        """The batch, with the 16-bit samples and levels a GPU computes as part of it (here
        the samples quantized on the CPU, the levels the template's moved by the gain: the
        model's work, as on a GPU it is the device's)."""
        from stave.generator.analysis import peak_dbfs
        from stave.generator.levels import BatchLevels
        from stave.generator.pipeline import MadeBatch
        from stave.tasks.storage import quantize

        self._device_time()
        members = []
        gains = []
        for position, request in enumerate(requests):
            seed = request.seed if request.seed is not None else position
            members.append(dataclasses.replace(request, seed=seed))
            # A per-request gain in [0.90, 0.99]: distinct bytes, the same loudness class.
            gains.append(0.90 + (zlib.crc32(f"{request.prompt}|{seed}".encode()) % 1000) / 11_100)
        chosen = [self.templates[p % len(self.templates)] for p in range(len(requests))]
        width = max(len(t.audio) for t in chosen)
        audio = torch.zeros(len(requests), width)
        for row, template in enumerate(chosen):
            audio[row, : len(template.audio)] = torch.from_numpy(template.audio)
        audio *= torch.tensor(gains)[:, None]
        pcm = np.zeros((len(requests), width), dtype=np.int16)
        for row, template in enumerate(chosen):
            pcm[row, : len(template.audio)] = quantize(audio[row, : len(template.audio)].numpy())
        top = np.abs(pcm.astype(np.int32)).max(axis=1)
        levels = BatchLevels(
            pcm=torch.from_numpy(pcm),
            nonfinite=[0] * len(requests),
            peaks_dbfs=[peak_dbfs(np.array([m / 32768], dtype=np.float32)) for m in top],
            loudness_lufs=[
                self.loudness[id(t)] + 20 * float(np.log10(g))
                for t, g in zip(chosen, gains, strict=True)
            ],
        )
        first = chosen[0]
        return [
            MadeBatch(
                requests=list(requests),
                members=tuple(members),
                positions=list(range(len(requests))),
                audio=audio,
                lengths=[len(t.audio) for t in chosen],
                embeddings=torch.from_numpy(np.stack([t.embedding for t in chosen])),
                sample_rate=first.sample_rate,
                timings=dict(first.timings),
                device=first.device,
                dtype=first.dtype,
                levels=levels,
            )
        ]

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        clips: list[Any] = [None] * len(requests)
        for batch in self.generate_batches(requests):
            for position, clip in zip(batch.positions, batch.clips(), strict=True):
                clips[position] = clip
        return clips


def install(settings: Any, seconds_per_batch: float, duration_s: float, *, calls: int = 0) -> Any:
    """Swap the process's loaded model's generator for the stand-in; returns the model.
    `calls` > 0: the device time is that many tiny torch calls, not a sleep."""
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
    model.generator = StandInGenerator(real, seconds_per_batch, templates, calls)
    return model
