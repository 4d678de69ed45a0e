"""What a training run does: corpus, steps, batch sizes, learning rates (one frozen config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stave.generator.autoencoder import AutoencoderConfig


@dataclass(frozen=True)
class TrainConfig:
    corpus_seed: int = 0
    corpus_clips: int = 1280
    clip_seconds: float = 10.0
    ae_steps: int = 1400
    ae_batch: int = 8
    ae_frames: int = 512  # control frames per crop: 2.05 s
    ae_lr: float = 2e-3
    embedding_steps: int = 300
    denoiser_steps: int = 4000
    denoiser_batch: int = 32
    denoiser_frames: int = 128  # latent frames per crop: 4.1 s
    denoiser_lr: float = 1e-3
    rope: bool = False  # rotary positions in the denoiser's self-attention
    structure: bool = True  # the denoiser's beat clock and key embedding (denoiser.py)
    checkpoint_every: int = 250
    seed: int = 0
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
