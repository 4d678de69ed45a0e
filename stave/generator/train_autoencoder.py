"""Autoencoder training steps: reconstruction, then the embedding head on frozen latents."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stave.generator.autoencoder import Autoencoder
from stave.generator.losses import multi_resolution_stft_loss, waveform_loss
from stave.generator.pool import CorpusPool
from stave.generator.synth import synthesize

CONTROL_WEIGHT = 100.0


def autoencoder_step(
    ae: Autoencoder,
    optimizer: torch.optim.Optimizer,
    pool: CorpusPool,
    rng: np.random.Generator,
    *,
    batch: int,
    frames: int,
    device: torch.device,
) -> dict[str, float]:
    """One optimisation step on random crops; returns the loss terms."""
    # Crops start on latent-frame boundaries (in control frames).
    _, audio, controls = pool.crops(rng, batch, frames, ae.cfg.time_downsample)
    audio, controls = audio.to(device), controls.to(device)
    latents = ae.encode(audio)
    predicted = ae.decoder.controls(latents)
    out = synthesize(predicted)
    terms = {
        "wave": waveform_loss(out, audio),
        "stft": multi_resolution_stft_loss(out, audio),
        # MSE on square roots: mean-seeking on sparse amplitudes (L1 would pull them all to
        # their median, zero) with quiet partials still counted.
        "controls": F.mse_loss(predicted.add(1e-6).sqrt(), controls.add(1e-6).sqrt())
        * CONTROL_WEIGHT,
        # Keep latents near unit scale so the denoiser sees a well-conditioned space.
        "latent_l2": latents.pow(2).mean() * 1e-3,
    }
    loss = sum(terms.values(), torch.zeros((), device=device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def embedding_step(
    ae: Autoencoder,
    optimizer: torch.optim.Optimizer,
    pool: CorpusPool,
    rng: np.random.Generator,
    *,
    batch: int,
    frames: int,
    device: torch.device,
) -> dict[str, float]:
    """Train the embedding head to separate timbres, on latents of the frozen encoder."""
    index, audio, _ = pool.crops(rng, batch, frames, ae.cfg.time_downsample)
    labels = pool.timbre_ids(index)
    with torch.no_grad():
        latents = ae.encode(audio.to(device))
    embedding = ae.embed(latents)
    logits = ae.embedder.classify(embedding * 10)
    loss = F.cross_entropy(logits, labels.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    accuracy = (logits.argmax(-1).cpu() == labels).float().mean()
    return {"ce": float(loss.detach()), "acc": float(accuracy)}
