"""The platform's ceiling: how many clips/s the generation flow publishes when the model is free.

The model is the stand-in (`standin.py`) with no device time: it returns ready, real 10-s clips
at once, so what is timed is the platform alone: claim, FLAC + measure + put, Great
Expectations, publish, and the Prefect task runs around them.

1. Stage split, in this process, no Prefect: N clips in batches of `--batch`, each stage timed
   on its own (claim, store = FLAC + measure + put, validate, publish): seconds and the clips/s
   each stage alone would allow.
2. The flow: `run-pending` for a job of N clips per worker process, with 1 and then 2 worker
   processes (a second core's worth of workers) against a PostgreSQL-backed Prefect server;
   clips/s from a common start to the job's last clip published, the busiest worker's peak RSS,
   CPU seconds by process kind, and the ratio to a GPU's rate (`--gpu-rate`, default 112
   clips/s: the shipped generator on an H200 at 256 ten-second clips in batches of 64).
   Target: >= 120 clips/s on this 2-core machine.

The batch is 256 by default: what the generator now takes on a large GPU (as many as free
memory holds, up to 512); a batch's fixed costs (its Prefect task runs, the Great Expectations
run, the gpu slot) weigh four times less per clip than at 64 (`--batch 64` shows that case).

Run: .venv/bin/python bench/platform_ceiling.py [--clips 1024] [--batch 256] [--workers 1,2]
     [--gpu-rate 112] [--duration 10]
(a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless set.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TARGET = 120.0


def stage_split(clips: int, batch: int, duration: float) -> dict[str, Any]:
    """Each stage of N clips timed alone, batch by batch, in this process."""
    import standin
    from fleet_scaling import pending_job

    from stave.infra.db import get_engine
    from stave.infra.objectstore import make_object_store
    from stave.infra.settings import get_settings
    from stave.tasks import inference, publish, queue, storage, validation

    settings = get_settings()
    engine, store = get_engine(), make_object_store(settings)
    model = standin.install(settings, 0.0, duration)
    validation.preload()  # one-time (a worker's first batch), not the stage's steady cost
    model_version = inference.register_model_version(engine, model)
    job = pending_job(engine, settings, clips, duration)
    seconds = {"claim": 0.0, "generate": 0.0, "store": 0.0, "validate": 0.0, "publish": 0.0}
    published = 0
    worker = f"ceiling-{uuid.uuid4().hex[:6]}"

    @contextlib.contextmanager
    def timed(stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds[stage] += time.perf_counter() - started

    while True:
        with timed("claim"):
            claimed = queue.claim(engine, worker, batch, 600, job)
        if not claimed:
            break
        with timed("generate"):
            made_clips = model.generator.generate(inference.requests_for(claimed))
        records = inference.provenances(made_clips, model, model_version)
        made = list(zip([t.id for t in claimed], made_clips, records, strict=True))
        with timed("store"):
            stored = storage.store_clips(store, made, env_name=settings.env)
        with timed("validate"):
            verdict = validation.validate(
                stored,
                settings,
                batch_id=f"{job}-{uuid.uuid4().hex[:8]}",
                sample_rate=made_clips[0].sample_rate,
            )
        with timed("publish"):
            outcome = publish.publish(
                engine,
                store,
                worker=worker,
                job_id=job,
                stored=stored,
                verdict=verdict,
                model_version_id=model_version,
                encoder_version=model.encoder_version,
            )
        published += len(outcome.published)
    assert published == clips, f"{published} of {clips} published"
    total = sum(seconds.values())
    return {
        "clips": clips,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "clips_per_s_alone": {k: round(clips / v, 1) if v else None for k, v in seconds.items()},
        "serial_clips_per_s": round(clips / total, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1024, help="clips per worker")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--duration", type=float, default=10.0, help="clip seconds")
    parser.add_argument("--gpu-rate", type=float, default=112.0, help="clips/s of one GPU")
    args = parser.parse_args()
    import fleet_scaling

    sizes = [int(n) for n in args.workers.split(",")]
    flows = []
    with fleet_scaling.fleet(args.batch) as (env, slots):
        split = stage_split(args.clips, args.batch, args.duration)
        print(json.dumps({"stage_split": split}), flush=True)
        for n in sizes:
            slots(n)
            drain = argparse.Namespace(
                batches=args.clips // args.batch,
                batch=args.batch,
                batch_seconds=0.0,
                duration=args.duration,
            )
            flows.append(fleet_scaling.drain_with(n, drain, env))
            print(json.dumps(flows[-1]), flush=True)

    print(f"\nstand-in model, no device time; {args.duration:g}-s clips, batches of {args.batch}")
    print("stage split (one process, no Prefect), seconds for", split["clips"], "clips:")
    for stage, spent in split["seconds"].items():
        alone = split["clips_per_s_alone"][stage]
        print(f"  {stage:<9} {spent:>7.2f} s   alone: {alone or float('inf'):>8.1f} clips/s")
    serial, rss = split["serial_clips_per_s"], split["peak_rss_mb"]
    print(f"  serial    {serial:>7.1f} clips/s, peak RSS {rss} MB")
    print(
        f"\n{'workers':>7} {'clips':>6} {'seconds':>8} {'clips/s':>8} {'vs GPU':>7}"
        f" {'cores busy':>10} {'peak RSS':>9}"
    )
    for r in flows:
        print(
            f"{r['workers']:>7} {r['clips']:>6} {r['seconds']:>8.1f} {r['rate']:>8.1f}"
            f" {r['rate'] / args.gpu_rate:>7.2f} {r['cores_busy']:>10.2f}"
            f" {r['peak_rss_mb']:>6} MB"
        )
    for r in flows:
        spent = ", ".join(f"{role} {seconds:.1f}" for role, seconds in r["cpu_s"].items())
        print(f"  {r['workers']} worker(s), CPU seconds: {spent}")
    best = max(r["rate"] for r in flows)
    print(
        f"ceiling {best:.1f} clips/s = {best / args.gpu_rate:.2f} x one GPU at "
        f"{args.gpu_rate:g} clips/s; target >= {TARGET:g}: {'met' if best >= TARGET else 'NOT met'}"
    )
    print(json.dumps({"stage_split": split, "flows": flows, "gpu_rate": args.gpu_rate}))


if __name__ == "__main__":
    main()
