"""The connection pool under load: 32 concurrent claimers drain 10,000 pending tasks.

Two runs on fresh tasks each, in the same process:
- baseline: an engine with one connection per claimer (pool_size = claimers): nobody waits;
- stave: the engine as configured (STAVE_DB_POOL_SIZE + STAVE_DB_MAX_OVERFLOW, 5 + 5 by
  default): claimers queue for connections.
Each claimer calls `stave.tasks.queue.claim` (SKIP LOCKED, leases, an event per task) for batches of
8 until nothing is left. Reported: claims per second, the ratio to the baseline, double claims
(must be 0: every task claimed exactly once), and the time claimers waited for a connection.

Run: .venv/bin/python bench/claim_pool.py [--tasks 10000] [--claimers 32] [--batch 8]
(a throwaway STAVE_HOME with the embedded PostgreSQL unless set.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import migrated_engine, throwaway_home


def pending_job(engine: Any, settings: Any, n: int) -> uuid.UUID:
    """n pending tasks in one job, through the real submission path."""
    from stave.tasks.intake import rows_from_parameter
    from stave.tasks.submission import submit

    tag = uuid.uuid4().hex[:8]
    rows = [{"prompt": f"bench {tag} {i}", "seed": i} for i in range(n)]
    job = submit(engine, rows_from_parameter(rows), settings).job_id
    assert job is not None
    return job


def timed_pool(engine: Any) -> list[float]:
    """Seconds each connection checkout waited (wraps the pool's internal get)."""
    waits: list[float] = []
    lock = threading.Lock()
    original = engine.pool._do_get

    def timed() -> Any:
        started = time.perf_counter()
        connection = original()
        with lock:
            waits.append(time.perf_counter() - started)
        return connection

    engine.pool._do_get = timed
    return waits


def warm(engine: Any) -> None:
    """Open the pool's kept connections before the clock starts."""
    held = [engine.connect() for _ in range(engine.pool.size())]
    for conn in held:
        conn.close()


def drain(engine: Any, job: uuid.UUID, claimers: int, batch: int) -> tuple[float, list[Any], int]:
    from stave.tasks.queue import claim

    claimed: list[list[Any]] = [[] for _ in range(claimers)]
    start = threading.Barrier(claimers + 1)

    def claimer(i: int) -> None:
        start.wait()
        while rows := claim(engine, f"bench-{i}", batch, 600.0, job):
            claimed[i].extend(r.id for r in rows)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    idle = sum(1 for per in claimed if not per)
    return seconds, [t for per in claimed for t in per], idle


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--claimers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    throwaway_home()

    from stave.infra.db import database_url, make_engine

    settings, default_engine = migrated_engine()
    url = database_url(settings)
    engines = {
        "baseline (1 connection per claimer)": make_engine(
            url, settings, pool_size=args.claimers, max_overflow=0
        ),
        f"stave (pool {settings.db_pool_size} + {settings.db_max_overflow})": make_engine(
            url, settings
        ),
    }
    results = []
    for name, engine in engines.items():
        job = pending_job(default_engine, settings, args.tasks)
        warm(engine)  # connection set-up is not what is measured
        waits = timed_pool(engine)
        seconds, ids, idle = drain(engine, job, args.claimers, args.batch)
        doubles = sum(n - 1 for n in Counter(ids).values() if n > 1)
        results.append(
            {
                "name": name,
                "claims": len(ids),
                "seconds": seconds,
                "rate": len(ids) / seconds,
                "doubles": doubles,
                "idle": idle,
                "missed": args.tasks - len(set(ids)),
                "wait_p50_ms": 1000 * percentile(waits, 0.5),
                "wait_p99_ms": 1000 * percentile(waits, 0.99),
                "wait_max_ms": 1000 * max(waits, default=0.0),
                "wait_mean_ms": 1000 * statistics.fmean(waits) if waits else 0.0,
            }
        )
        engine.dispose()

    base = results[0]["rate"]
    print(
        f"\n{args.claimers} claimers, {args.tasks} pending tasks, batches of {args.batch}\n"
        f"{'':38} {'claims/s':>9} {'ratio':>6} {'double':>6} {'missed':>6} "
        f"{'wait p50':>9} {'mean':>8} {'p99':>8} {'max':>8} {'starved':>8}"
    )
    for r in results:
        print(
            f"{r['name']:38} {r['rate']:9.0f} {r['rate'] / base:6.2f} {r['doubles']:6d} "
            f"{r['missed']:6d} {r['wait_p50_ms']:7.2f}ms {r['wait_mean_ms']:6.1f}ms "
            f"{r['wait_p99_ms']:6.1f}ms {r['wait_max_ms']:6.1f}ms {r['idle']:8d}"
        )
    if any(r["doubles"] or r["missed"] for r in results):
        sys.exit("FAIL: a task was claimed twice or not at all")


if __name__ == "__main__":
    main()
