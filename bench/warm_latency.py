"""Warm workers: seconds from a task becoming pending to its clip published, on a steady trickle.

Two ways a GPU host can serve a trickle of single-clip requests, in the same run, on the same
database, store and Prefect server, with the real model:
- per-run: each request starts a fresh process that runs the `run-pending` flow once, as a
  Prefect process worker starts a process per flow run (imports, model load, then the clip).
  The worker's own polling (PREFECT_WORKER_QUERY_SECONDS, 10 s by default) comes on top and is
  left out here, in its favour;
- warm: one `stave run-pending --follow` process, model loaded, warmed up by one clip before
  the trickle; it runs a flow whenever work is due (polling every STAVE_FOLLOW_POLL_S).
Printed: p50 / p99 / max latency of each, and the ratio per-run / warm.

Run: .venv/bin/python bench/warm_latency.py [--requests 12] [--interval 8] [--duration 2]
(a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless set.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STAVE = [sys.executable, "-m", "stave"]


def submit_one(engine: Any, settings: Any, tag: str, i: int, duration: float) -> uuid.UUID:
    from stave.tasks.intake import rows_from_parameter
    from stave.tasks.submission import submit

    row = {"prompt": f"warm bench {tag} {i}: bell arpeggio", "seed": i, "duration_s": duration}
    job = submit(engine, rows_from_parameter([row]), settings).job_id
    assert job is not None
    return job


def latency(engine: Any, job: uuid.UUID, timeout: float = 300) -> float:
    """Seconds from the job's task created (pending) to its published event."""
    from sqlalchemy import text

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT extract(epoch FROM e.created_at - t.created_at) FROM task_event e "
                    "JOIN generation_task t ON t.id = e.task_id "
                    "WHERE t.job_id = :job AND e.to_status = 'published'"
                ),
                {"job": job},
            ).scalar()
        if row is not None:
            return float(row)
        time.sleep(0.05)
    raise SystemExit(f"job {job} was not published within {timeout} s")


def per_run(
    engine: Any, settings: Any, args: argparse.Namespace, env: dict[str, str]
) -> list[float]:
    tag, seen = uuid.uuid4().hex[:6], []
    for i in range(args.requests):
        began = time.monotonic()
        job = submit_one(engine, settings, tag, i, args.duration)
        # What a process worker does for a run: a fresh process, the flow, the model, the clip.
        proc = subprocess.Popen(
            [*STAVE, "run-pending", "--job", str(job), "--json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen.append(latency(engine, job))
        proc.wait(timeout=300)
        time.sleep(max(0.0, args.interval - (time.monotonic() - began)))
    return seen


def warm(engine: Any, settings: Any, args: argparse.Namespace, env: dict[str, str]) -> list[float]:
    tag, seen = uuid.uuid4().hex[:6], []
    proc = subprocess.Popen(
        [*STAVE, "run-pending", "--follow", "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        latency(engine, submit_one(engine, settings, tag, args.requests, args.duration))  # warm-up
        for i in range(args.requests):
            began = time.monotonic()
            seen.append(latency(engine, submit_one(engine, settings, tag, i, args.duration)))
            time.sleep(max(0.0, args.interval - (time.monotonic() - began)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return seen


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--interval", type=float, default=8.0, help="seconds between requests")
    parser.add_argument("--duration", type=float, default=2.0, help="clip seconds")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import migrated_engine, throwaway_home

    throwaway_home()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["STAVE_PUBLISH_PAGES"] = "false"
    settings, engine = migrated_engine()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from stave.infra.db import database_url

    with prefect_test_harness(server_startup_timeout=120):
        env = {
            **os.environ,
            "STAVE_PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "STAVE_DATABASE_URL": database_url(settings),
        }
        results = {"per_run": per_run(engine, settings, args, env)}
        results["warm"] = warm(engine, settings, args, env)
    rows = {mode: summary(values) for mode, values in results.items()}
    print(
        f"\n{args.requests} requests of one {args.duration:g}-s clip, one every {args.interval:g} s"
    )
    print(f"{'mode':<8} {'p50 s':>7} {'p99 s':>7} {'max s':>7}")
    for mode, row in rows.items():
        print(f"{mode:<8} {row['p50']:>7.2f} {row['p99']:>7.2f} {row['max']:>7.2f}")
    print(
        f"per-run / warm: p50 {rows['per_run']['p50'] / rows['warm']['p50']:.1f}x, "
        f"p99 {rows['per_run']['p99'] / rows['warm']['p99']:.1f}x"
    )
    print(json.dumps({"latency_s": results, "summary": rows}))


if __name__ == "__main__":
    main()
