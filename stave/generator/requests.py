"""What the generator is asked and what it gives back: requests, clips, batches.

A `GenerationRequest` is one clip to make; `generate` returns `Clip`s on the host;
`generate_batches` returns `MadeBatch`es left on the device, for a caller that measures and
copies a whole batch at once (the generation drain).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from stave.generator.errors import InvalidRequest
from stave.generator.levels import BatchLevels
from stave.generator.sampler import SCHEDULERS

MAX_SEED = 2**63 - 1
DEFAULT_STEPS = 16
DEFAULT_GUIDANCE = 3.0
DEFAULT_SCHEDULER = "euler"


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    duration_s: float = 10.0
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    scheduler: str = DEFAULT_SCHEDULER
    seed: int | None = None
    lyrics: str | None = None  # carried for the record; the built-in model sings no words

    def validate(self) -> None:
        checks = [
            (
                bool(self.prompt.strip()) and len(self.prompt) <= 512,
                "prompt",
                "must be 1-512 characters",
            ),
            (
                self.lyrics is None or len(self.lyrics) <= 4096,
                "lyrics",
                "must be at most 4096 characters",
            ),
            (
                math.isfinite(self.duration_s) and 1 <= self.duration_s <= 600,
                "duration_s",
                "must be 1-600 seconds",
            ),
            (1 <= self.steps <= 200, "steps", "must be 1-200"),
            (
                math.isfinite(self.guidance) and 0 <= self.guidance <= 30,
                "guidance",
                "must be a finite number 0-30",
            ),
            (self.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}"),
            (
                self.seed is None or 0 <= self.seed <= MAX_SEED,
                "seed",
                "must be a 63-bit non-negative integer",
            ),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise InvalidRequest(f"request field {name} {rule} (got {getattr(self, name)!r})")


@dataclass
class Clip:
    audio: np.ndarray  # (samples,) float32 in [-1, 1]
    sample_rate: int
    embedding: np.ndarray  # (512,) float32, unit norm
    seed: int
    timings: dict[str, float]  # seconds per stage for the batch this clip was made in
    device: str
    dtype: str
    request: GenerationRequest
    # The requests (seeds resolved) this clip was computed together with, and its place among
    # them: a matrix product's rounding depends on the batch, so making the same bytes again
    # means running the same batch again (`run_batch`).
    batch: tuple[GenerationRequest, ...] = field(default=(), repr=False)
    batch_position: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class MadeBatch:
    """One batch as the device left it: the clips' audio and embeddings still on the device,
    for a caller that measures and copies the whole batch at once (the generation drain);
    `clips()` gives the host copies `generate` returns."""

    requests: list[GenerationRequest]  # as asked (a seed may be None)
    members: tuple[GenerationRequest, ...]  # the same, seeds resolved: what replay runs
    positions: list[int]  # each member's index in the `generate_batches` call's requests
    audio: torch.Tensor  # (rows, samples) float32 in [-1, 1]; row i valid up to lengths[i]
    lengths: list[int]
    embeddings: torch.Tensor  # (rows, 512) float32, unit norm
    sample_rate: int
    timings: dict[str, float]
    device: str
    dtype: str
    # The 16-bit samples and levels, where the device computed them (a GPU does, as part of
    # the batch's work); None: the host quantizes and measures.
    levels: BatchLevels | None = None

    @classmethod
    def of_clip(cls, clip: Clip, position: int) -> MadeBatch:
        """A clip made elsewhere (ACE-Step's adapter), as a batch of one on the host."""
        member = clip.batch[clip.batch_position] if clip.batch else clip.request
        return cls(
            requests=[clip.request],
            members=(dataclasses.replace(member, seed=clip.seed),),
            positions=[position],
            audio=torch.from_numpy(np.ascontiguousarray(clip.audio, dtype=np.float32))[None],
            lengths=[len(clip.audio)],
            embeddings=torch.from_numpy(np.asarray(clip.embedding, dtype=np.float32))[None],
            sample_rate=clip.sample_rate,
            timings=dict(clip.timings),
            device=clip.device,
            dtype=clip.dtype,
        )

    def clips(self) -> list[Clip]:
        audio = self.audio.cpu().numpy()  # one copy of the batch, not one per clip
        embeddings = self.embeddings.cpu().numpy()
        return [
            Clip(
                audio=audio[row, :length],
                sample_rate=self.sample_rate,
                embedding=embeddings[row],
                seed=int(member.seed),  # type: ignore[arg-type]
                timings=dict(self.timings),
                device=self.device,
                dtype=self.dtype,
                request=request,
                batch=self.members,
                batch_position=row,
            )
            for row, (request, member, length) in enumerate(
                zip(self.requests, self.members, self.lengths, strict=True)
            )
        ]
