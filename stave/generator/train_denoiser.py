"""Denoiser training: flow matching on normalised latents of the corpus, prompt dropout for CFG."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stave.generator.autoencoder import Autoencoder
from stave.generator.corpus import prompt_for
from stave.generator.denoiser import Denoiser, DenoiserConfig
from stave.generator.pool import CorpusPool
from stave.generator.synth import SAMPLE_RATE
from stave.generator.text import tokenize
from stave.generator.train_config import TrainConfig

PROMPT_DROPOUT = 0.1  # share of steps trained unconditionally, for classifier-free guidance


@dataclass
class DenoiserData:
    latents: torch.Tensor  # (N, C, T), normalised
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    prompts: list[str]

    @classmethod
    @torch.no_grad()
    def build(cls, ae: Autoencoder, pool: CorpusPool, device: torch.device) -> DenoiserData:
        ae.eval()
        chunks = [
            ae.encode(pool.audio[i : i + 16].to(device)).cpu() for i in range(0, len(pool), 16)
        ]
        ae.train()
        latents = torch.cat(chunks)
        mean = latents.mean(dim=(0, 2))
        std = latents.std(dim=(0, 2)).clamp_min(1e-3)
        normalised = (latents - mean[None, :, None]) / std[None, :, None]
        return cls(normalised, mean, std, [prompt_for(label) for label in pool.labels])


def make_denoiser(cfg: TrainConfig, device: torch.device) -> tuple[Denoiser, torch.optim.Optimizer]:
    model = Denoiser(
        DenoiserConfig(
            latent_channels=cfg.autoencoder.latent_channels,
            rope=cfg.rope,
            structure=cfg.structure,
            frame_rate=SAMPLE_RATE / cfg.autoencoder.compression,
        )
    ).to(device)
    return model, torch.optim.AdamW(model.parameters(), cfg.denoiser_lr, weight_decay=0.01)


def denoiser_step(
    model: Denoiser,
    optimizer: torch.optim.Optimizer,
    data: DenoiserData,
    rng: np.random.Generator,
    *,
    batch: int,
    frames: int,
    device: torch.device,
) -> dict[str, float]:
    index = rng.integers(0, len(data.prompts), batch)
    starts = rng.integers(0, data.latents.shape[-1] - frames + 1, batch)
    x1 = torch.stack(
        [data.latents[i, :, s : s + frames] for i, s in zip(index, starts, strict=True)]
    )
    prompts = [data.prompts[i] if rng.random() >= PROMPT_DROPOUT else "" for i in index]
    x1 = x1.to(device)
    x0 = torch.randn_like(x1)
    # Logit-normal times: most training where the velocity is hardest to guess (mid-way).
    t = torch.sigmoid(torch.randn(batch, device=device))
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    text = model.encode_text(tokenize(prompts).to(device))
    # The crop's start tells the beat clock where in its clip (and so in its bar) it begins.
    offset = torch.from_numpy(starts).to(device)
    loss = F.mse_loss(model(xt, t, text, offset=offset), x1 - x0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return {"flow": float(loss.detach())}
