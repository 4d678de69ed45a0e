"""Denoiser time per step vs sequence length: linear attention beside softmax attention.

Prints, for 1x, 2x, 4x, 8x the frames of a 10-second clip, the seconds per denoiser step (a
CFG pair, batch 1) and each one's growth relative to 1x. Linear attention should grow ~linearly;
softmax attention's quadratic term shows at long lengths.
Run: .venv/bin/python bench/denoiser_scaling.py
"""

from __future__ import annotations

import time

import torch

from stave.generator.denoiser import Denoiser, DenoiserConfig
from stave.generator.text import tokenize

BASE_FRAMES = 313  # 10 s at 31.25 latent frames per second


def seconds_per_step(model: Denoiser, frames: int, repeats: int = 3) -> float:
    tokens = tokenize(["bright bell arpeggio in D minor, 96 bpm, with drums", ""])
    with torch.no_grad():
        text = model.encode_text(tokens)
        x = torch.randn(2, model.cfg.latent_channels, frames)
        t = torch.full((2,), 0.5)
        model(x, t, text)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(x, t, text)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    torch.manual_seed(0)
    models = {
        kind: Denoiser(DenoiserConfig(latent_channels=64, attention=kind)).eval()
        for kind in ("linear", "softmax")
    }
    header = ("frames", "linear s", "growth", "softmax s", "growth", "softmax/linear")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (7, 9, 7, 10, 7, 15), strict=True)))
    base: dict[str, float] = {}
    for factor in (1, 2, 4, 8):
        frames = BASE_FRAMES * factor
        row = {kind: seconds_per_step(model, frames) for kind, model in models.items()}
        base = base or row
        print(
            f"{frames:>7} {row['linear']:>9.3f} {row['linear'] / base['linear']:>6.2f}x"
            f" {row['softmax']:>10.3f} {row['softmax'] / base['softmax']:>6.2f}x"
            f" {row['softmax'] / row['linear']:>14.2f}x"
        )


if __name__ == "__main__":
    main()
