"""Everything #19 asks of the generator on one GPU, in one run, printed as one JSON object.

Needs only torch, numpy, scipy and `stave/generator` (what the lent GPU machine has): no
database, no Prefect. Figures, each for 10-s clips at the default steps:
- throughput: clips/s, real-time factor, peak device memory and the stage split at batch 8, 64
  and the largest batch free memory allows (`StaveGenerator.batch_size`), each after a warm-up
  of the same shape; beside it, in the same run, the path as it was (batches capped at 64,
  decoded and embedded clip by clip) on the same 256 clips, and the ratio;
- diffusion vs raw: the pipeline's diffusion time over the same number of bare denoiser calls
  (same shapes, no sampler or text around them), at batch 8 and 64;
- quality: the full held-out evaluation (key, tempo, sounds-alike precision@10);
- determinism: the same request twice (identical bytes) and `run_batch` replaying a batch
  (identical bytes).
Targets: >= 330 clips/s at the largest batch on an H200, quality within 0.03 of the CUDA
figures measured before (key 0.854, tempo 0.906, precision@10 0.929), exact replay.

Run (the GPU): python bench/gpu_suite.py            (about 3 minutes on an H200)
Run (a smoke test of the code on the CPU, small shapes): python bench/gpu_suite.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from stave.generator.corpus import prompt_for
from stave.generator.evaluate import evaluate, held_out
from stave.generator.pipeline import (
    DEFAULT_STEPS,
    GenerationRequest,
    StaveGenerator,
)
from stave.generator.text import tokenize

BEFORE = {"key_accuracy": 0.854, "tempo_accuracy": 0.906, "sounds_alike_precision_at_10": 0.929}
TARGET_CLIPS_PER_S = 330.0


def requests_for(n: int, seconds: float, steps: int, offset: int = 90_000) -> list[Any]:
    return [
        GenerationRequest(prompt_for(lab), duration_s=seconds, steps=steps, seed=i)
        for i, lab in enumerate(held_out(n, offset=offset))
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(gen: StaveGenerator, requests: list[Any]) -> dict[str, Any]:
    """One warm-up of the same shape, then the timed run: clips/s, RTF, peak memory, stages."""
    gen.generate(requests[: gen.batch_size(gen._frames(requests[0].duration_s))])
    if gen.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(gen.device)
    sync(gen.device)
    started = time.perf_counter()
    clips = gen.generate(requests)
    sync(gen.device)
    wall = time.perf_counter() - started
    seconds = sum(c.duration_s for c in clips)
    peak = torch.cuda.max_memory_allocated(gen.device) if gen.device.type == "cuda" else None
    batches = {id(c.batch): c for c in clips}.values()  # one clip per batch: its stage times
    stages = {
        stage: round(sum(c.timings.get(stage, 0.0) for c in batches), 3)
        for stage in ("conditioning", "diffusion", "decode", "embed")
    }
    return {
        "clips": len(clips),
        "batch": len(clips[0].batch),
        "seconds": round(wall, 3),
        "clips_per_s": round(len(clips) / wall, 1),
        "rtf": round(seconds / wall, 1),
        "peak_gb": round(peak / 1e9, 3) if peak is not None else None,
        "stages_s": stages,
    }


def diffusion_vs_raw(gen: StaveGenerator, batch: int, seconds: float, steps: int) -> float:
    """The pipeline's diffusion time over the same denoiser calls made bare."""
    requests = requests_for(batch, seconds, steps)
    gen.generate(requests)
    clips = gen.generate(requests)
    diffusion = clips[0].timings["diffusion"]
    passes = 3 if gen.denoiser.cfg.structure else 2
    frames = gen._frames(seconds)
    x = torch.randn(batch * passes, gen.ae.cfg.latent_channels, frames, device=gen.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=gen.device.type == "cuda")
    with torch.no_grad(), autocast:
        text = gen.denoiser.encode_text(
            tokenize([r.prompt for r in requests] * passes).to(gen.device)
        )
        t = torch.full((batch * passes,), 0.5, device=gen.device)
        gen.denoiser(x, t, text)
        sync(gen.device)
        started = time.perf_counter()
        for _ in range(steps):
            gen.denoiser(x, t, text)
        sync(gen.device)
    return round(diffusion / (time.perf_counter() - started), 2)


def determinism(gen: StaveGenerator, seconds: float, steps: int) -> dict[str, bool]:
    requests = requests_for(8, seconds, steps, offset=91_000)
    first, again = gen.generate(requests[:1])[0], gen.generate(requests[:1])[0]
    batch = gen.generate(requests)
    replay = gen.run_batch(list(batch[3].batch))
    return {
        "same_request_twice_identical": first.audio.tobytes() == again.audio.tobytes(),
        "run_batch_replay_identical": all(
            a.audio.tobytes() == b.audio.tobytes() for a, b in zip(batch, replay, strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="small shapes: a CPU smoke test")
    args = parser.parse_args()
    seconds, steps = (2.0, 2) if args.quick else (10.0, DEFAULT_STEPS)
    sizes = (2, 4) if args.quick else (8, 64)
    began = time.perf_counter()
    gen = StaveGenerator.load(args.checkpoint, device=args.device)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(gen.device) if gen.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(gen.dtype).removeprefix("torch."),
        "clip_seconds": seconds,
        "steps": steps,
        "quick": args.quick,
    }
    largest = gen.batch_size(gen._frames(seconds))
    out["largest_batch"] = largest
    out["throughput"] = {
        str(size): timed_generate(gen, requests_for(size, seconds, steps)) for size in sizes
    }
    out["throughput"]["largest"] = timed_generate(gen, requests_for(largest, seconds, steps))
    # The path as it was, same device, same run: batches of at most 64, decoded clip by clip.
    n = 8 if args.quick else 256
    before = StaveGenerator.load(
        args.checkpoint, device=args.device, max_batch=min(64, largest), batched_decode=False
    )
    now_n, before_n = (
        timed_generate(gen, requests_for(n, seconds, steps)),
        timed_generate(before, requests_for(n, seconds, steps)),
    )
    out["same_clips_now_vs_before"] = {
        "clips": n,
        "now": now_n,
        "before": before_n,
        "speedup": round(now_n["clips_per_s"] / before_n["clips_per_s"], 2),
    }
    del before
    out["diffusion_vs_raw"] = {
        str(size): diffusion_vs_raw(gen, size, seconds, steps) for size in sizes
    }
    out["determinism"] = determinism(gen, seconds, steps)
    quality = evaluate(gen, quick=args.quick)
    out["quality"] = quality
    out["quality_delta"] = {k: round(quality[k] - v, 4) for k, v in BEFORE.items()}
    best = out["throughput"]["largest"]["clips_per_s"]
    out["verdict"] = {
        "clips_per_s_target": TARGET_CLIPS_PER_S,
        "clips_per_s_met": best >= TARGET_CLIPS_PER_S,
        "quality_within_0_03": all(d >= -0.03 for d in out["quality_delta"].values()),
        "replay_exact": all(out["determinism"].values()),
    }
    out["suite_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
