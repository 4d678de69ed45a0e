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

Each returned clip carries its own request and seed, and a few low bits of its samples set
from the request, so every clip has its own bytes (and checksum) as real ones would. Batches
come back as `MadeBatch`es with their 16-bit samples and levels, the way the real generator
leaves them on a GPU (the host's work for them a copy); `generate` gives the host clips.
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
        from stave.generator.analysis import loudness_lufs, peak_dbfs
        from stave.tasks.storage import quantize

        self.pcm = {id(t): quantize(t.audio) for t in self.templates}
        self.loudness = {
            id(t): loudness_lufs(self.pcm[id(t)].astype(np.float32) / 32768, t.sample_rate)
            for t in self.templates
        }
        self.peaks = {
            id(t): peak_dbfs(self.pcm[id(t)].astype(np.float32) / 32768) for t in self.templates
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
        """The batch as a GPU leaves it: its 16-bit samples and levels computed with it. Each
        clip is a template's, with the lowest bit of its first 32 samples set from its request
        (its own bytes and checksum, the template's levels to within a millionth of a dB):
        what the model makes costs the host a copy, as a GPU's batch would."""
        from stave.generator.levels import BatchLevels
        from stave.generator.pipeline import MadeBatch

        self._device_time()
        members = []
        chosen = []
        for position, request in enumerate(requests):
            seed = request.seed if request.seed is not None else position
            members.append(dataclasses.replace(request, seed=seed))
            chosen.append(self.templates[position % len(self.templates)])
        width = max(len(t.audio) for t in chosen)
        pcm = np.zeros((len(requests), width), dtype=np.int16)
        bits = np.arange(32)
        for row, (template, member) in enumerate(zip(chosen, members, strict=True)):
            pcm[row, : len(template.audio)] = self.pcm[id(template)]
            mark = zlib.crc32(f"{member.prompt}|{member.seed}".encode())
            pcm[row, :32] ^= ((mark >> bits) & 1).astype(np.int16)
        first = chosen[0]
        return [
            MadeBatch(
                requests=list(requests),
                members=tuple(members),
                positions=list(range(len(requests))),
                # Where the model's float samples would be: the flow reads the levels' samples.
                audio=torch.empty(len(requests), width),
                lengths=[len(t.audio) for t in chosen],
                embeddings=torch.from_numpy(np.stack([t.embedding for t in chosen])),
                sample_rate=first.sample_rate,
                timings=dict(first.timings),
                device=first.device,
                dtype=first.dtype,
                levels=BatchLevels(
                    pcm=torch.from_numpy(pcm),
                    nonfinite=[0] * len(requests),
                    peaks_dbfs=[self.peaks[id(t)] for t in chosen],
                    loudness_lufs=[self.loudness[id(t)] for t in chosen],
                ),
            )
        ]

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        """Host clips of the same (their audio the samples the flow would store)."""
        clips: list[Any] = [None] * len(requests)
        for batch in self.generate_batches(requests):
            assert batch.levels is not None
            batch.audio = batch.levels.pcm.float() / 32768
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
