"""Flow-matching (rectified flow) sampling with Euler or Heun steps and classifier-free guidance.

Time runs from 0 (pure noise) to 1 (data); the model predicts the velocity x1 - x0. Each request
draws its starting noise from its own seeded generator on the CPU, so a clip does not depend on
which other requests shared its batch, nor on the device's random number generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

Scheduler = Literal["euler", "heun"]
SCHEDULERS: tuple[Scheduler, ...] = ("euler", "heun")
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def initial_noise(seeds: Sequence[int], channels: int, frames: int) -> torch.Tensor:
    """(B, channels, frames) standard normal noise, one seeded CPU generator per request."""
    rows = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        rows.append(torch.randn(channels, frames, generator=gen))
    return torch.stack(rows)


def guided(
    model: Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor],
    guidance: torch.Tensor,
    contrast: torch.Tensor | None = None,
) -> Velocity:
    """Classifier-free guidance: v = v_uncond + g * (v_cond - v_uncond), per request.

    With `contrast` (per request, 0 for none), a second term pushes away from the model's
    "contrast" branch, a prompt that differs in one named fact (a negative prompt):
    v += c * (v_cond - v_contrast). The model is asked for branch "cond", "uncond" or
    "contrast".
    """

    # Asked once per batch, not at every step: each is a wait for the device (a GPU's queue
    # drains while the host waits, then idles while the host catches up).
    cond_only = bool((guidance == 1).all())
    contrasted = contrast is not None and bool((contrast != 0).any())

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cond = model(x, t, "cond")
        if cond_only:
            v = v_cond
        else:
            v_uncond = model(x, t, "uncond")
            g = guidance.to(x.dtype)[:, None, None]
            v = v_uncond + g * (v_cond - v_uncond)
        if contrasted:
            assert contrast is not None
            c = contrast.to(x.dtype)[:, None, None]
            v = v + c * (v_cond - model(x, t, "contrast"))
        return v

    return velocity


def sample(
    velocity: Velocity, noise: torch.Tensor, steps: int, scheduler: Scheduler
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 0 to 1 in `steps` steps."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULERS}")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    x = noise
    times = torch.linspace(0, 1, steps + 1, device=noise.device)
    for i in range(steps):
        t0, t1 = times[i], times[i + 1]
        dt = t1 - t0
        tb = t0.expand(x.shape[0])
        v0 = velocity(x, tb)
        if scheduler == "heun" and i < steps - 1:
            x_pred = x + dt * v0
            v1 = velocity(x_pred, t1.expand(x.shape[0]))
            x = x + dt * (v0 + v1) / 2
        else:
            x = x + dt * v0
    return x
