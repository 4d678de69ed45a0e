"""Real-time factor of the shipped generator: 8 ten-second clips, default steps, vs target 5.

RTF = seconds of audio per second of wall time. Also prints the time split by stage and the
raw denoiser cost (the same number of model calls with no sampler, text or decode around them)
so the pipeline's own overhead shows as a ratio.
Run: .venv/bin/python bench/generator_rtf.py [--checkpoint PATH] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from stave.generator.corpus import prompt_for
from stave.generator.evaluate import held_out
from stave.generator.pipeline import DEFAULT_STEPS, GenerationRequest, StaveGenerator

TARGET_RTF = 5.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clips", type=int, default=8)
    args = parser.parse_args()
    generator = StaveGenerator.load(args.checkpoint, device=args.device)
    requests = [
        GenerationRequest(prompt_for(lab), duration_s=10.0, seed=i)
        for i, lab in enumerate(held_out(args.clips, offset=90_000))
    ]
    generator.generate(requests[:1])
    started = time.perf_counter()
    clips = generator.generate(requests)
    wall = time.perf_counter() - started
    rtf = args.clips * 10.0 / wall
    stages = clips[0].timings

    # Raw baseline: the denoiser forward passes alone, same shapes: 2 per step for CFG, 3 where
    # the model reads keys (the held-out prompts name one: mode guidance adds a pass).
    passes = 3 if generator.denoiser.cfg.structure else 2
    frames = generator._frames(10.0)
    x = torch.randn(
        args.clips * passes, generator.ae.cfg.latent_channels, frames, device=generator.device
    )
    from stave.generator.text import tokenize

    with torch.no_grad():
        prompts = [r.prompt for r in requests] * passes
        text = generator.denoiser.encode_text(tokenize(prompts).to(generator.device))
        t = torch.full((args.clips * passes,), 0.5, device=generator.device)
        generator.denoiser(x, t, text)
        raw_started = time.perf_counter()
        for _ in range(DEFAULT_STEPS):
            generator.denoiser(x, t, text)
        raw = time.perf_counter() - raw_started
    print(f"device {generator.device}, {args.clips} clips x 10 s, {DEFAULT_STEPS} steps")
    print(f"wall {wall:.2f} s  RTF {rtf:.2f}  target {TARGET_RTF}")
    print(f"ratio to target {rtf / TARGET_RTF:.2f}")
    print("stages " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
    print(f"raw denoiser calls {raw:.2f} s")
    print(f"pipeline diffusion / raw denoiser calls = {stages['diffusion'] / raw:.2f}")


if __name__ == "__main__":
    main()
