"""The platform's ceiling and its CPU per clip: the generation flow with a model that is free.

The model is the stand-in (`standin.py`) with no device time: it returns ready, real 10-s clips
at once, so what is timed and counted is the platform alone: claim, the device's measuring and
the copy into shared memory (here on the CPU), the hand-over, FLAC + measure + put, Great
Expectations, publish, the Data Docs after the job, and the Prefect task runs and servers
around them.

`run-pending` drains a job of N clips per worker process, with 1 and then 2 worker processes
(each with its own finishing processes, started and warm before the clock starts, as a
long-running worker's are) against a PostgreSQL-backed Prefect server. Printed per run:
clips/s from a common start to the job's last clip published, the ratio to a GPU's rate
(`--gpu-rate`: the shipped generator on an H200 at its largest batch), and the platform's CPU
per published clip, by process kind and by step:
- the model's process: its CPU during the run, less the stand-in's own (the model's work);
- the finishers: each request's process CPU as they report it, split by step (encode,
  measure, put, validate, publish; "other" is the rest of the request: reading the handoff,
  Great Expectations' frame, the batch's bookkeeping), and the Data Docs built after the job;
- PostgreSQL (Stave's and Prefect's) and the Prefect server, from /proc, until every worker
  is done.
Target: <= 8 ms of CPU per 10-s clip (all of the above), the median of the runs (--repeats).

Run: .venv/bin/python bench/platform_ceiling.py [--clips 1024] [--batch 256] [--workers 1,2]
     [--repeats 3] [--gpu-rate 296] [--duration 10]
(a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless set.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TARGET_MS = 8.0


def cpu_split(run: dict[str, Any]) -> dict[str, float]:
    """CPU seconds of one run by process kind and step (the model's own work left out)."""
    split: dict[str, float] = {}
    for report in run["reports"]:
        spent = report["cpu_s"]
        model_own = spent.get("model (in its process)", 0.0)
        split["model's process"] = split.get("model's process", 0.0) + (
            report["process_cpu_s"] - model_own
        )
        steps = {k.removeprefix("finishers: "): v for k, v in spent.items() if "finishers" in k}
        whole = steps.pop("process", 0.0)
        for step, seconds in steps.items():
            split[f"finishers: {step}"] = split.get(f"finishers: {step}", 0.0) + seconds
        other = max(0.0, whole - sum(steps.values()))
        split["finishers: other"] = split.get("finishers: other", 0.0) + other
        split["finishers: data docs"] = split.get("finishers: data docs", 0.0) + report.get(
            "pages_cpu_s", 0.0
        )
    for server, seconds in run["servers_cpu_s"].items():
        split[server] = seconds
    return split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1024, help="clips per worker")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="clip seconds")
    parser.add_argument("--gpu-rate", type=float, default=296.0, help="clips/s of one GPU")
    args = parser.parse_args()
    import fleet_scaling

    sizes = [int(n) for n in args.workers.split(",")]
    runs: list[dict[str, Any]] = []
    with fleet_scaling.fleet(args.batch) as (env, slots):
        for _ in range(args.repeats):
            for n in sizes:
                slots(n)
                drain = argparse.Namespace(
                    batches=args.clips // args.batch,
                    batch=args.batch,
                    batch_seconds=0.0,
                    duration=args.duration,
                )
                run = fleet_scaling.drain_with(n, drain, env)
                run["split"] = cpu_split(run)
                run["cpu_ms_per_clip"] = 1000 * sum(run["split"].values()) / run["clips"]
                runs.append(run)
                print(json.dumps(run), flush=True)

    print(f"\nstand-in model, no device time; {args.duration:g}-s clips, batches of {args.batch}")
    print(
        f"{'workers':>7} {'clips':>6} {'seconds':>8} {'clips/s':>8} {'vs GPU':>7}"
        f" {'cores busy':>10} {'peak RSS':>9} {'CPU ms/clip':>12}"
    )
    for r in runs:
        print(
            f"{r['workers']:>7} {r['clips']:>6} {r['seconds']:>8.1f} {r['rate']:>8.1f}"
            f" {r['rate'] / args.gpu_rate:>7.2f} {r['cores_busy']:>10.2f}"
            f" {r['peak_rss_mb']:>6} MB {r['cpu_ms_per_clip']:>12.2f}"
        )
    print("\nCPU ms per published clip, by process kind and step (median of the runs):")
    keys = sorted({k for r in runs for k in r["split"]})
    for key in keys:
        values = [1000 * r["split"].get(key, 0.0) / r["clips"] for r in runs]
        print(f"  {key:<24} {statistics.median(values):>7.2f}")
    per_clip = [r["cpu_ms_per_clip"] for r in runs]
    median = statistics.median(per_clip)
    best = max(r["rate"] for r in runs)
    print(
        f"\nCPU per clip: median {median:.2f} ms of {len(per_clip)} runs "
        f"{[round(v, 2) for v in per_clip]}; target <= {TARGET_MS:g} ms: "
        f"{'met' if median <= TARGET_MS else 'NOT met'}"
    )
    print(f"ceiling {best:.1f} clips/s = {best / args.gpu_rate:.2f} x one GPU at {args.gpu_rate:g}")
    print(json.dumps({"runs": runs, "gpu_rate": args.gpu_rate, "cpu_ms_per_clip": median}))


if __name__ == "__main__":
    main()
