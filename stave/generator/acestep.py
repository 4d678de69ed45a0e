"""Adapter for the real ACE-Step model (optional extra `acestep`, a local checkpoint directory).

Maps Stave's request onto ACE-Step's pipeline parameters and returns the same Clip type; the
embedding is pooled from the latents of Stave's own encoder over the produced audio, so clips
of both generators live in one sounds-alike space. The mapping is a pure function, tested
without weights.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stave.generator.errors import CheckpointError, GeneratorError
from stave.generator.pipeline import MAX_SEED, Clip, GenerationRequest

ACESTEP_SCHEDULERS = {"euler": "euler", "heun": "heun"}


def acestep_params(request: GenerationRequest, seed: int) -> dict[str, Any]:
    """The keyword arguments ACEStepPipeline.__call__ takes for this request."""
    request.validate()
    return {
        "prompt": request.prompt,
        "lyrics": request.lyrics or "",
        "audio_duration": float(request.duration_s),
        "infer_step": int(request.steps),
        "guidance_scale": float(request.guidance),
        "scheduler_type": ACESTEP_SCHEDULERS[request.scheduler],
        "manual_seeds": [int(seed)],
    }


class AceStepGenerator:
    """Generates through ACE-Step; embeddings come from `embedder` (a StaveGenerator)."""

    name = "ace-step"

    def __init__(self, checkpoint_dir: Path, *, embedder: Any, device: str = "auto") -> None:
        if not checkpoint_dir.is_dir():
            raise CheckpointError(
                f"ACE-Step checkpoint directory {checkpoint_dir} does not exist "
                "(set STAVE_ACESTEP_CHECKPOINT_DIR)"
            )
        try:
            from acestep.pipeline_ace_step import ACEStepPipeline
        except ImportError as err:
            raise GeneratorError(
                "STAVE_GENERATOR=acestep needs the ace-step package: pip install 'stave[acestep]'"
            ) from err

        self.device = "cuda" if device == "auto" and torch.cuda.is_available() else device
        self.dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.pipeline = ACEStepPipeline(str(checkpoint_dir), dtype=self.dtype)
        self.embedder = embedder

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Clip]:
        import soundfile

        clips = []
        for request in requests:
            seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
            params = acestep_params(request, seed)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "clip.wav"
                started = time.perf_counter()
                self.pipeline(**params, save_path=str(out))
                elapsed = time.perf_counter() - started
                audio, rate = soundfile.read(str(out), dtype="float32", always_2d=True)
            mono = audio.mean(axis=1).astype(np.float32)
            clips.append(
                Clip(
                    audio=mono,
                    sample_rate=int(rate),
                    embedding=self.embedder.embed_audio(mono, rate),
                    seed=seed,
                    timings={"total": elapsed},
                    device=self.device,
                    dtype=self.dtype,
                    request=request,
                )
            )
        return clips
