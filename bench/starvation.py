"""Does the platform starve the model? A GPU host's model thread, inside the whole flow.

A thread that drives a GPU makes many short torch calls, each giving up Python's GIL and
taking it back; whatever else runs Python in its process (or takes its core) makes each
take-back wait. The stand-in (`standin.py`, `calls` mode) behaves that way: per batch, a loop
of tiny torch calls calibrated to take about `--batch-seconds` alone, then the batch's clips
(made once by the real model) returned with their samples and levels as a GPU leaves them.
It runs through the real flow (`generate`: submit, claim, generate, hand over; finishing
processes store, validate, publish; the job's pages after), at batch 256, in this process.

Printed: the stand-in's time per batch inside the flow over its time alone (measured in the
same run, before and after the flow, median of 5 each), per repeat and the median; and the
flow's wall against the stand-in's alone. Target: inside / alone <= 1.15, the median of the
repeats.

Run: .venv/bin/python bench/starvation.py [--clips 1024] [--batch 256] [--batch-seconds 1.0]
     [--repeats 3] [--duration 10]
(a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless set.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TARGET = 1.15


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batch-seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="clip seconds")
    args = parser.parse_args()
    from common import throwaway_home

    throwaway_home()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["STAVE_BATCH_SIZE"] = str(args.batch)
    os.environ["STAVE_DEFAULT_DURATION_S"] = str(args.duration)
    import standin
    from prefect.testing.utilities import prefect_test_harness

    from stave.infra import migrate
    from stave.infra.db import database_url
    from stave.infra.settings import get_settings
    from stave.tasks import finishing

    settings = get_settings()
    migrate.upgrade(database_url(settings))
    calls, _ = standin.calibrate(args.batch_seconds)
    model = standin.install(settings, args.batch_seconds, args.duration, calls=calls)
    generator = model.generator
    finishing.finishers(settings).wait_ready()  # a long-running worker's are warm

    from stave.flows.generate import generate

    def rows(tag: str, n: int) -> list[dict[str, object]]:
        return [
            {"prompt": f"starvation bench {tag} {i}", "seed": i, "duration_s": args.duration}
            for i in range(n)
        ]

    results = []
    with prefect_test_harness(server_startup_timeout=120):
        generate(rows=rows(f"warm-up {uuid.uuid4().hex[:6]}", 8))  # one-time costs, untimed
        finishing.wait_for_pages()
        for _ in range(args.repeats):
            before = sorted(standin.drive(calls) for _ in range(5))[2]
            generator.driving_s.clear()
            started = time.perf_counter()
            summary = generate(rows=rows(uuid.uuid4().hex[:8], args.clips))
            wall = time.perf_counter() - started
            finishing.wait_for_pages()
            after = sorted(standin.drive(calls) for _ in range(5))[2]
            assert summary["published"] == args.clips, summary
            alone = (before + after) / 2
            inside = statistics.mean(generator.driving_s)
            results.append(
                {
                    "alone_s": round(alone, 3),
                    "inside_s": round(inside, 3),
                    "ratio": round(inside / alone, 3),
                    "batches": len(generator.driving_s),
                    "each_s": [round(t, 3) for t in generator.driving_s],
                    "flow_wall_s": round(wall, 2),
                    "flow_vs_alone": round(wall / (alone * len(generator.driving_s)), 3),
                    "gpu_busy": summary.get("gpu_busy"),
                    "stages_s": summary.get("seconds"),
                }
            )
            print(json.dumps(results[-1]), flush=True)

    ratios = [r["ratio"] for r in results]
    ratio = statistics.median(ratios)
    print(
        f"\nstand-in: {calls} tiny torch calls per batch (about {args.batch_seconds:g} s alone), "
        f"{args.clips} clips of {args.duration:g} s in batches of {args.batch}"
    )
    head = f"{'repeat':>6} {'alone s':>8} {'inside s':>9} {'ratio':>6} {'flow s':>7}"
    print(f"{head} {'flow/alone':>10}")
    for i, r in enumerate(results, 1):
        print(
            f"{i:>6} {r['alone_s']:>8.3f} {r['inside_s']:>9.3f} {r['ratio']:>6.3f}"
            f" {r['flow_wall_s']:>7.1f} {r['flow_vs_alone']:>10.2f}"
        )
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"model thread inside the flow / alone, median of {len(ratios)}: {ratio:.3f} "
        f"({verdict} the {TARGET} target); each: {ratios}"
    )
    print(json.dumps({"results": results, "ratio": ratio, "calls": calls}))


if __name__ == "__main__":
    main()
