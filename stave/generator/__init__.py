"""Stave's music generator: torch only, no Prefect and no database.

from stave.generator import GenerationRequest, StaveGenerator
request = GenerationRequest("warm organ chords in A minor, 90 bpm", seed=7)
clips = StaveGenerator.load().generate([request])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# The checkpoint shipped inside the package (torch-free to name: the CLI reads its model card).
PACKAGED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "stave-small.pt"
# The built-in model's sample rate (torch-free to name: a finishing process has no torch).
SAMPLE_RATE = 16_000

if TYPE_CHECKING:
    from stave.generator.errors import (
        CheckpointError,
        GeneratorError,
        InvalidRequest,
        ResourceExhausted,
    )
    from stave.generator.pipeline import Clip, GenerationRequest, StaveGenerator

__all__ = [
    "PACKAGED_CHECKPOINT",
    "SAMPLE_RATE",
    "CheckpointError",
    "Clip",
    "GenerationRequest",
    "GeneratorError",
    "InvalidRequest",
    "ResourceExhausted",
    "StaveGenerator",
]


def __getattr__(name: str) -> Any:
    # Lazy, so `import generator.corpus` (or the CLI) does not pay for torch until it needs it.
    if name in ("Clip", "GenerationRequest", "StaveGenerator"):
        from stave.generator import pipeline

        return getattr(pipeline, name)
    if name in ("CheckpointError", "GeneratorError", "InvalidRequest", "ResourceExhausted"):
        from stave.generator import errors

        return getattr(errors, name)
    raise AttributeError(name)
