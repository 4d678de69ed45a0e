"""Bulk generation overhead: the whole flow vs the bare generator on the same N requests.

Both sides run in this process on the same warm model: the baseline calls
`StaveGenerator.generate` on the requests, in the same batches the flow claims; the flow
submits them as rows and runs claim → generate → store (FLAC, measure, put) → validate (Great
Expectations) → publish (one transaction per batch) with Prefect task runs and artifacts, the
finishing in processes of their own. The job's pages are built after its run (waited for
before the next timing, and printed apart). One-time
costs (Prefect's server, model load, the GX import) are paid by a warm-up job first and printed
apart. Target: flow / baseline <= 1.15 at N = 64 on this CPU, the median of the paired runs.

Run: .venv/bin/python bench/generate_overhead.py [--clips 64] [--duration 10]
(uses a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless
STAVE_HOME / STAVE_DATABASE_URL are set.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

TARGET = 1.15


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import throwaway_home

    throwaway_home()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from stave.generator.corpus import prompt_for
    from stave.generator.evaluate import held_out
    from stave.infra import migrate
    from stave.infra.db import database_url
    from stave.infra.settings import get_settings
    from stave.tasks import inference

    settings = get_settings()
    migrate.upgrade(database_url(settings))
    from prefect.testing.utilities import prefect_test_harness

    from stave.flows.generate import generate

    labels = held_out(args.clips, offset=70_000)
    prompts = [prompt_for(lab) for lab in labels]

    def rows(tag: str) -> list[dict[str, object]]:
        return [
            {"prompt": f"{p} ({tag})", "seed": i, "duration_s": args.duration}
            for i, p in enumerate(prompts)
        ]

    from stave.tasks import finishing

    with prefect_test_harness(server_startup_timeout=120):
        started = time.perf_counter()
        generate(rows=rows(f"warm-up {uuid.uuid4().hex[:6]}")[:8])
        finishing.wait_for_pages()  # built after the run: not left running into a timing
        one_time = time.perf_counter() - started
        model = inference.load_model(settings)
        size = settings.batch_size or model.batch_size(settings.default_duration_s)

        from stave.generator.pipeline import GenerationRequest

        flow_times, raw_times = [], []
        for _ in range(args.repeats):
            tag = uuid.uuid4().hex[:6]
            requests = [
                GenerationRequest(
                    prompt=str(r["prompt"]),
                    duration_s=args.duration,
                    seed=int(r["seed"]),  # type: ignore[call-overload]
                )
                for r in rows(tag)
            ]
            started = time.perf_counter()
            for start in range(0, len(requests), size):
                model.generator.generate(requests[start : start + size])
            raw_times.append(time.perf_counter() - started)

            started = time.perf_counter()
            summary = generate(rows=rows(tag))
            flow_times.append(time.perf_counter() - started)
            assert summary["published"] == args.clips, summary
            started = time.perf_counter()
            finishing.wait_for_pages()  # the job's pages, after its run (not in its time)
            pages = time.perf_counter() - started
            print(
                f"flow stages (s): {summary.get('seconds')}; GPU busy {summary.get('gpu_busy')}; "
                f"pages after the run {pages:.2f} s"
            )

    # Each repeat times the baseline and the flow back to back on the same requests; the
    # verdict is the median of those paired ratios, not the best run.
    ratios = sorted(f / r for f, r in zip(flow_times, raw_times, strict=True))
    ratio = statistics.median(ratios)
    raw, flow = statistics.median(raw_times), statistics.median(flow_times)
    audio = args.clips * args.duration
    print(
        f"N = {args.clips} clips x {args.duration:g} s, batches of {size}, "
        f"device {model.generator.device}"
    )
    print(f"one-time start-up (Prefect server, model, GX; warm-up job of 8): {one_time:.1f} s")
    print(f"{'medians':<28}{'wall s':>8}{'clips/s':>9}{'RTF':>7}")
    print(
        f"{'generator alone (baseline)':<28}{raw:>8.2f}{args.clips / raw:>9.2f}{audio / raw:>7.1f}"
    )
    print(f"{'whole flow (ours)':<28}{flow:>8.2f}{args.clips / flow:>9.2f}{audio / flow:>7.1f}")
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"overhead ratio flow/baseline, median of {len(ratios)} paired runs: {ratio:.3f} "
        f"({verdict} the {TARGET} target); each run: {[round(r, 3) for r in ratios]}"
    )
    print(
        f"all runs: baseline {[round(t, 2) for t in raw_times]}, "
        f"flow {[round(t, 2) for t in flow_times]}"
    )


if __name__ == "__main__":
    main()
