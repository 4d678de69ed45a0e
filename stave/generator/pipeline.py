"""The inference API: `StaveGenerator.generate(requests) -> list[Clip]`.

Requests are grouped by length (so no clip is padded by another's), batched to fit the device,
and run through text conditioning, flow-matching diffusion and decoding. CUDA runs under bf16
autocast; the CPU in float32. The same request, seed, checkpoint, device and dtype give the same
samples.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stave.generator.autoencoder import EMBEDDING_DIM, Autoencoder, AutoencoderConfig
from stave.generator.checkpoint import PACKAGED, load_checkpoint
from stave.generator.denoiser import Denoiser, DenoiserConfig
from stave.generator.errors import Interrupted, InvalidRequest, ResourceExhausted
from stave.generator.levels import measure_batch
from stave.generator.requests import (
    DEFAULT_GUIDANCE,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    MAX_SEED,
    Clip,
    GenerationRequest,
    MadeBatch,
)
from stave.generator.sampler import guided, initial_noise, sample
from stave.generator.synth import SAMPLE_RATE
from stave.generator.text import EncodedPrompt, parallel_key, tokenize

# The request and result types live in `requests.py`; they are this module's API too.
__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_SCHEDULER",
    "DEFAULT_STEPS",
    "MAX_SEED",
    "Clip",
    "GenerationRequest",
    "MadeBatch",
    "StaveGenerator",
]

# Guidance away from the parallel key (a minor prompt's major twin): tonic and tempo are easy,
# the mode is one semitone in one chord tone, and without it minor prompts drift to major.
MODE_GUIDANCE = 2.0
CPU_MAX_BATCH = 8
# On CUDA the batch is what free memory holds, up to this unless told otherwise; a 10-s clip
# peaks at about 4 MB of device memory at batch 64 (measured on an H200), so an estimate of
# 64 bytes per output sample leaves room for batched decoding.
CUDA_MAX_BATCH = 512
DEVICE_BYTES_PER_SAMPLE = 64


# Clips per encoder pass when embedding many.
EMBED_PASS = 16


class StaveGenerator:
    """The built-in model, loaded once and reused for every batch."""

    name = "stave-small"

    def __init__(
        self,
        payload: dict[str, Any],
        device: str = "auto",
        *,
        max_batch: int | None = None,
        batched_decode: bool | None = None,
    ) -> None:
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        cuda = self.device.type == "cuda"
        self.max_batch = max_batch or (CUDA_MAX_BATCH if cuda else CPU_MAX_BATCH)
        # Decoding and embedding a batch at once (CUDA's default) makes a clip depend on its
        # batch (a convolution's kernel is picked by batch size): replay stays exact because
        # `run_batch` replays the same batch. The CPU decodes clip by clip, as it always has.
        self.batched = cuda if batched_decode is None else batched_decode
        self.sha256: str = payload["sha256"]
        self.meta: dict[str, Any] = payload.get("meta", {})
        self.ae = Autoencoder(AutoencoderConfig(**payload["autoencoder_config"]))
        self.ae.load_state_dict(payload["autoencoder"])
        self.denoiser = Denoiser(DenoiserConfig(**payload["denoiser_config"]))
        self.denoiser.load_state_dict(payload["denoiser"])
        self.latent_mean = payload["latent_mean"].to(self.device)
        self.latent_std = payload["latent_std"].to(self.device)
        for module in (self.ae, self.denoiser):
            module.to(self.device).eval()
        # Asked between denoiser steps; True abandons the batch (`Interrupted`), so a caller
        # told to stop (Ctrl-C, a supervisor's SIGTERM) need not wait for the batch to end.
        self.interrupt: Callable[[], bool] | None = None

    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        *,
        device: str = "auto",
        expected_sha256: str | None = None,
        max_batch: int | None = None,
        batched_decode: bool | None = None,
    ) -> StaveGenerator:
        payload = load_checkpoint(Path(path) if path else PACKAGED, expected_sha256)
        return cls(payload, device, max_batch=max_batch, batched_decode=batched_decode)

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.ae.cfg.compression

    # -- generation ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Clip]:
        clips: list[Clip | None] = [None] * len(requests)
        for batch in self.generate_batches(requests):
            for position, clip in zip(batch.positions, batch.clips(), strict=True):
                clips[position] = clip
        return [c for c in clips if c is not None]

    def generate_batches(self, requests: Sequence[GenerationRequest]) -> list[MadeBatch]:
        """The requests made in batches that share length, steps and scheduler (guidance is
        per clip), each as large as the device holds; the batches stay on the device."""
        for request in requests:
            request.validate()
        seeds = [
            r.seed if r.seed is not None else secrets.randbelow(MAX_SEED + 1) for r in requests
        ]
        by_length: dict[tuple[int, int, str], list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            key = (
                self._frames(request.duration_s),
                request.steps,
                request.scheduler,
            )
            by_length[key].append(i)
        made: list[MadeBatch] = []
        for (frames, _, _), members in by_length.items():
            size = self.batch_size(frames)
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                for batch, rows in self._with_oom_fallback(
                    [requests[i] for i in chunk], [seeds[i] for i in chunk], frames
                ):
                    batch.positions = [chunk[row] for row in rows]
                    made.append(batch)
        return made

    def run_batch(self, requests: Sequence[GenerationRequest]) -> list[Clip]:
        """Run `requests` (seeded, same length, steps and scheduler) as exactly one batch."""
        for request in requests:
            request.validate()
        first = requests[0]
        frames = self._frames(first.duration_s)
        for request in requests:
            if request.seed is None:
                raise InvalidRequest("run_batch needs a seed on every request")
            if (self._frames(request.duration_s), request.steps, request.scheduler) != (
                frames,
                first.steps,
                first.scheduler,
            ):
                raise InvalidRequest("run_batch needs one length, step count and scheduler")
        return self._run(list(requests), [int(r.seed) for r in requests], frames)  # type: ignore[arg-type]

    def _frames(self, duration_s: float) -> int:
        return max(1, math.ceil(duration_s * self.frame_rate))

    def batch_size(self, frames: int) -> int:
        """Clips per batch: what free memory holds on CUDA, up to `max_batch`; `max_batch`
        (8 unless set) on the CPU."""
        if self.device.type != "cuda":
            return self.max_batch
        free, _ = torch.cuda.mem_get_info(self.device)
        per_clip = frames * self.ae.cfg.compression * DEVICE_BYTES_PER_SAMPLE
        return max(1, min(self.max_batch, int(free * 0.7 // per_clip)))

    def _with_oom_fallback(
        self, requests: list[GenerationRequest], seeds: list[int], frames: int
    ) -> list[tuple[MadeBatch, range]]:
        """The batch, or its halves (and theirs) when the device runs out of memory, each with
        the rows of `requests` it holds; one clip that does not fit is ResourceExhausted. Each
        part is a batch of its own in the clips' provenance, so replay stays exact."""
        try:
            return [(self._make(requests, seeds, frames), range(len(requests)))]
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
        if len(requests) == 1:
            raise ResourceExhausted(f"out of device memory generating one {frames}-frame clip")
        half = len(requests) // 2
        first = self._with_oom_fallback(requests[:half], seeds[:half], frames)
        second = self._with_oom_fallback(requests[half:], seeds[half:], frames)
        return first + [
            (batch, range(half + rows.start, half + rows.stop)) for batch, rows in second
        ]

    def _run(self, requests: list[GenerationRequest], seeds: list[int], frames: int) -> list[Clip]:
        return self._make(requests, seeds, frames).clips()

    @torch.no_grad()
    def _make(self, requests: list[GenerationRequest], seeds: list[int], frames: int) -> MadeBatch:
        first = requests[0]
        timings: dict[str, float] = {}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            started = time.perf_counter()
            cond = self.denoiser.encode_text(tokenize([r.prompt for r in requests]).to(self.device))
            null = self.denoiser.encode_text(tokenize([""] * len(requests)).to(self.device))
            branches = {"cond": cond, "uncond": null, "contrast": parallel_key(cond)}
            timings["conditioning"] = self._lap(started)

            # Per batch, not per step: each branch's text constants; per step, not per
            # branch: the time's conditioning (the branches of a step share `t`).
            prepared = {
                name: self.denoiser.prepare(text, frames) for name, text in branches.items()
            }
            step: dict[str, Any] = {"t": None, "time": None}

            def model(x: torch.Tensor, t: torch.Tensor, branch: str) -> torch.Tensor:
                if self.interrupt is not None and self.interrupt():
                    raise Interrupted("generation interrupted between denoiser steps")
                if step["t"] is not t:
                    step["t"], step["time"] = t, self.denoiser.embed_time(t)
                return self.denoiser(
                    x, t, branches[branch], prepared=prepared[branch], time=step["time"]
                ).float()

            started = time.perf_counter()
            noise = initial_noise(seeds, self.ae.cfg.latent_channels, frames).to(self.device)
            guidance = torch.tensor([r.guidance for r in requests], device=self.device)
            contrast = self._mode_guidance(cond)
            velocity = guided(model, guidance, contrast)
            latents = sample(velocity, noise, first.steps, first.scheduler)  # type: ignore[arg-type]
            timings["diffusion"] = self._lap(started)

            started = time.perf_counter()
            raw = (
                latents * self.latent_std[None, :, None] + self.latent_mean[None, :, None]
            ).float()
            if self.batched:
                audio = self.ae.decode(raw)
            else:
                # One clip at a time: the decoder's convolutions pick kernels by batch size,
                # and on the CPU a clip does not change with the company it was made in.
                audio = torch.cat([self.ae.decode(raw[i : i + 1]) for i in range(len(requests))])
            audio = audio.float().clamp(-1, 1)
            timings["decode"] = self._lap(started)
        # The embedding is the clip's audio encoded (float32, as `embed_audio` does), not the
        # sampled latents: a published clip, a backfilled one and a file given to search are
        # then embedded alike, so one encoder version means one space.
        started = time.perf_counter()
        lengths = [self._samples(r) for r in requests]
        embeddings = self._embed_rows(audio, lengths)
        timings["embed"] = self._lap(started)
        levels = None
        if self.device.type == "cuda":  # free on a GPU; the CPU's own numpy is cheaper there
            started = time.perf_counter()
            levels = measure_batch(audio, lengths, SAMPLE_RATE)
            timings["levels"] = self._lap(started)
        return MadeBatch(
            requests=list(requests),
            members=tuple(
                dataclasses.replace(r, seed=seed) for r, seed in zip(requests, seeds, strict=True)
            ),
            positions=list(range(len(requests))),
            audio=audio,
            lengths=lengths,
            embeddings=embeddings,
            sample_rate=SAMPLE_RATE,
            timings=timings,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            levels=levels,
        )

    def _embed_rows(self, audio: torch.Tensor, samples: list[int]) -> torch.Tensor:
        """Each row's first `samples[row]` samples embedded: rows of one length together when
        batched, else one by one."""
        if not self.batched:
            return torch.cat(
                [self.ae.embed(self.ae.encode(audio[i : i + 1, :n])) for i, n in enumerate(samples)]
            ).float()
        out = torch.empty(len(samples), EMBEDDING_DIM, device=audio.device)
        by_length: dict[int, list[int]] = defaultdict(list)
        for row, n in enumerate(samples):
            by_length[n].append(row)
        for n, rows in by_length.items():
            out[rows] = self.ae.embed(self.ae.encode(audio[rows, :n])).float()
        return out

    def _mode_guidance(self, cond: EncodedPrompt) -> torch.Tensor | None:
        """Per request, the mode guidance: where the model reads keys and the prompt names one."""
        if not self.denoiser.cfg.structure or not bool((cond.key > 0).any()):
            return None
        return (cond.key > 0).float() * MODE_GUIDANCE

    @staticmethod
    def _samples(request: GenerationRequest) -> int:
        return round(request.duration_s * SAMPLE_RATE)

    def _lap(self, started: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    # -- embeddings of any audio -------------------------------------------------------------
    def embed_audio(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """A 512-d unit vector for any audio (mono or (samples, channels)), at any rate."""
        vector = self.embed_many([(audio, sample_rate)])[0]
        assert vector.shape == (EMBEDDING_DIM,)
        return vector

    @torch.no_grad()
    def embed_many(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """Unit vectors (n, 512) for many clips: clips of equal length share one encoder pass.

        A backfill's clips mostly share a duration, so this batches nearly everything; the
        pooled embedding must not see padding, hence grouping by length rather than padding.
        """
        mono = [self._mono_at_model_rate(audio, rate) for audio, rate in clips]
        out = np.zeros((len(mono), EMBEDDING_DIM), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, samples in enumerate(mono):
            by_length.setdefault(len(samples), []).append(i)
        for same_length in by_length.values():
            # Bounded passes keep the encoder's activations small whatever the batch.
            for start in range(0, len(same_length), EMBED_PASS):
                members = same_length[start : start + EMBED_PASS]
                x = torch.from_numpy(np.stack([mono[i] for i in members])).to(self.device)
                out[members] = self.ae.embed(self.ae.encode(x)).float().cpu().numpy()
        return out

    def _mono_at_model_rate(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = audio.mean(axis=1) if audio.ndim == 2 else audio
        if sample_rate != SAMPLE_RATE:
            from scipy.signal import resample_poly

            g = math.gcd(SAMPLE_RATE, sample_rate)
            mono = resample_poly(mono, SAMPLE_RATE // g, sample_rate // g)
        minimum = self.ae.cfg.compression
        if len(mono) < minimum:
            mono = np.pad(mono, (0, minimum - len(mono)))
        return np.ascontiguousarray(mono, dtype=np.float32)

    def embed_file(self, path: Path | str) -> np.ndarray:
        import soundfile

        try:
            audio, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise InvalidRequest(f"cannot read audio file {path}: {err}") from err
        return self.embed_audio(audio, int(rate))
