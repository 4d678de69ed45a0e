"""A pool of rendered corpus clips held in memory, and random aligned crops from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from stave.generator.corpus import TIMBRES, ClipLabels, render, sample_labels
from stave.generator.synth import HOP


@dataclass
class CorpusPool:
    labels: list[ClipLabels]
    audio: torch.Tensor  # (N, samples)
    controls: torch.Tensor  # (N, channels, samples / HOP)

    @classmethod
    def render(
        cls,
        seed: int,
        clips: int,
        seconds: float,
        progress: Callable[[int], None] | None = None,
    ) -> CorpusPool:
        labels, audio, controls = [], [], []
        for i in range(clips):
            clip_labels = sample_labels(seed * 1_000_003 + i)
            a, c = render(clip_labels, seconds)
            labels.append(clip_labels)
            audio.append(torch.from_numpy(a))
            controls.append(torch.from_numpy(c))
            if progress is not None:
                progress(1)
        return cls(labels, torch.stack(audio), torch.stack(controls))

    def __len__(self) -> int:
        return len(self.labels)

    def timbre_ids(self, index: torch.Tensor) -> torch.Tensor:
        return torch.tensor([TIMBRES.index(self.labels[int(i)].timbre) for i in index])

    def crops(
        self, rng: np.random.Generator, batch: int, frames: int, align: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, audio crops, control crops): `frames` control frames starting at multiples of
        `align` frames, so crops line up with latent frames."""
        index = torch.from_numpy(rng.integers(0, len(self), batch))
        total = self.controls.shape[-1]
        frames = min(frames, total // align * align)  # never longer than the clips
        starts = rng.integers(0, (total - frames) // align + 1, batch) * align
        audio = torch.stack(
            [
                self.audio[i, s * HOP : (s + frames) * HOP]
                for i, s in zip(index, starts, strict=True)
            ]
        )
        ctrl = torch.stack(
            [self.controls[i, :, s : s + frames] for i, s in zip(index, starts, strict=True)]
        )
        return index, audio, ctrl
