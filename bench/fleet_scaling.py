"""Coordination scales: 1, 2, 4 and 8 worker processes draining one queue through Prefect.

Each worker is its own process (as each GPU host's flow run is) running the `run-pending` flow
for the job against one Prefect server, with the `gpu` global concurrency limit set to the
number of workers (one slot per simulated GPU, so the limit is exercised, not binding). The
model is the stand-in (`standin.py`): each batch takes a fixed time without using the CPU, as
a GPU would, and returns real clips, so claim → store → validate → publish and every Prefect
task run and artifact are the real ones. Workers import, load and warm up first; the clock runs
from a common start to the job's last clip published.

Printed per N: clips/s and efficiency = rate(N) / (N * rate(1)). Target: >= 0.9 at 4 workers,
>= 0.8 at 8. Then the claim path alone: 64 processes (not threads) claiming one queue of tasks
at once, checked for any task claimed twice.

The simulated batch time (8 s by default) is chosen so that eight workers' platform work
(FLAC, validation, publishing, Prefect's task runs: about 1 CPU-second per batch here, all
"hosts" sharing this machine's cores) stays under the cores this machine has: each real host
brings its own CPUs. `cores busy` is printed beside each figure; near the core count, the
CPU is what limits, not the coordination (try --batch-seconds 2 to see it).

Run: .venv/bin/python bench/fleet_scaling.py [--workers 1,2,4,8] [--batches 8]
     [--batch 8] [--batch-seconds 8] [--duration 1.0] [--claimers 64] [--claim-tasks 5000]
(a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless set.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGETS = {4: 0.9, 8: 0.8}


def child(args: argparse.Namespace) -> None:
    """One worker: load the stand-in, start its finishers, say ready, wait for the start,
    drain the job; then print what its CPU went to (JSON, one line)."""
    sys.path.insert(0, str(HERE))
    import resource

    import standin

    from stave.flows.generate import run_pending
    from stave.infra.settings import get_settings
    from stave.tasks import finishing

    settings = get_settings()
    standin.install(settings, args.batch_seconds, args.duration)
    finishing.finishers(settings).wait_ready()  # a long-running worker has them: not timed
    print("ready", flush=True)
    go = Path(args.go)
    while not go.exists():
        time.sleep(0.01)
    before = resource.getrusage(resource.RUSAGE_SELF)
    summary = run_pending(job_id=uuid.UUID(args.job))
    pages = finishing.wait_for_pages()  # the Data Docs, built after the run: counted too
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "process_cpu_s": (after.ru_utime + after.ru_stime)
                - (before.ru_utime + before.ru_stime),
                "cpu_s": summary["cpu_s"],
                "pages_cpu_s": sum(p.get("cpu_s", 0.0) for p in pages),
                "published": summary["published_now"],
            }
        ),
        flush=True,
    )
    finishing.close_finishers()


def pending_job(engine: Any, settings: Any, n: int, duration: float) -> uuid.UUID:
    from stave.tasks.intake import rows_from_parameter
    from stave.tasks.submission import submit

    tag = uuid.uuid4().hex[:8]
    rows = [
        {"prompt": f"fleet bench {tag} {i}", "seed": i, "duration_s": duration, "steps": 2}
        for i in range(n)
    ]
    job = submit(engine, rows_from_parameter(rows), settings).job_id
    assert job is not None
    return job


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by each kind of process on the machine: PostgreSQL (Stave's and
    Prefect's), the Prefect server, Python workers and the rest (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if cmdline.startswith("postgres") or "/bin/postgres" in cmdline:
            role = "postgres"
        elif "stave.tasks.finishing.worker" in cmdline:
            role = "finishers"
        elif "stave server" in cmdline or "prefect" in cmdline or "uvicorn" in cmdline:
            role = "prefect server"
        elif "--child" in cmdline:
            role = "workers"
        else:
            role = "other"
        used[role] = used.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def open_tasks(engine: Any, job: uuid.UUID) -> int:
    from stave.tasks import queue

    return queue.job_state(engine, job).open


def drain_with(workers: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    from stave.infra.db import get_engine
    from stave.infra.settings import get_settings

    engine = get_engine()
    clips = workers * args.batches * args.batch
    job = pending_job(engine, get_settings(), clips, args.duration)
    go = Path(os.environ["STAVE_HOME"]) / f"go-{uuid.uuid4().hex}"
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--child", "--job", str(job), "--go", str(go)),
                *(f"--batch-seconds={args.batch_seconds}", f"--duration={args.duration}"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:  # imports, model load and the stand-in's templates: not timed
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"a worker did not start (exit {proc.wait()})")
        started, cpu_start, roles_start = time.perf_counter(), cpu_ticks(), cpu_by_role()
        go.touch()
        while open_tasks(engine, job):
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        busy, total = (b - a for a, b in zip(cpu_start, cpu_ticks(), strict=True))
        roles = {k: round(v - roles_start.get(k, 0.0), 1) for k, v in cpu_by_role().items()}
        cores_busy = (os.cpu_count() or 1) * busy / max(1, total)
        peak_rss_mb = 0.0
        reports = []
        for proc in procs:  # each worker's report, then its peak RSS with its exit (wait4)
            assert proc.stdout is not None
            lines = [line for line in proc.stdout.read().splitlines() if line.startswith("{")]
            reports.append(json.loads(lines[-1]) if lines else {})
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            peak_rss_mb = max(peak_rss_mb, usage.ru_maxrss / 1024)
        # The servers' CPU until every worker is done (the Data Docs after the job included).
        served = {k: round(v - roles_start.get(k, 0.0), 1) for k, v in cpu_by_role().items()}
    finally:  # interrupted: no worker left behind
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        go.unlink(missing_ok=True)
    return {
        "workers": workers,
        "clips": clips,
        "seconds": round(elapsed, 2),
        "rate": round(clips / elapsed, 3),
        # The whole machine's cores busy while draining (workers, Prefect server, databases):
        # near the core count, the platform's CPU work (all hosts' on one machine here), not
        # coordination, sets the pace.
        "cores_busy": round(cores_busy, 2),
        "peak_rss_mb": round(peak_rss_mb),
        # CPU seconds while draining, by process kind (exited processes are not counted).
        "cpu_s": {k: v for k, v in sorted(roles.items()) if v > 0},
        "servers_cpu_s": {k: served.get(k, 0.0) for k in ("postgres", "prefect server")},
        "reports": reports,
    }


def _claimer(url: str, job: str, batch: int, ready: Any, start: Any, out: Any) -> None:
    from sqlalchemy import create_engine, text

    from stave.tasks import queue

    engine = create_engine(url, pool_size=1)
    with engine.connect() as conn:  # connected before the start, as a running worker is
        conn.execute(text("SELECT 1"))
    worker = f"claimer-{os.getpid()}"
    got: list[str] = []
    ready.put(os.getpid())
    start.wait()
    while claimed := queue.claim(engine, worker, batch, 600, uuid.UUID(job)):
        got += [str(t.id) for t in claimed]
    out.put(got)
    engine.dispose()


def claim_race(claimers: int, tasks: int, batch: int) -> dict[str, Any]:
    """`claimers` processes claim one job's `tasks` at once; any task claimed twice counts."""
    from stave.infra.db import database_url, get_engine
    from stave.infra.settings import get_settings

    settings = get_settings()
    job = pending_job(get_engine(), settings, tasks, 1.0)
    context = multiprocessing.get_context("spawn")
    ready, start, out = context.Queue(), context.Event(), context.Queue()
    url = database_url(settings)
    procs = [
        context.Process(target=_claimer, args=(url, str(job), batch, ready, start, out))
        for _ in range(claimers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:  # every claimer imported and connected
        ready.get(timeout=300)
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=300) for _ in procs]
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join(timeout=60)
    counts = Counter(task for got in results for task in got)
    return {
        "claimers": claimers,
        "tasks": tasks,
        "claimed": len(counts),
        "claimed_twice": sum(1 for n in counts.values() if n > 1),
        "claims_per_s": round(tasks / elapsed),
        "busiest_claimer": max(len(got) for got in results),
    }


@contextlib.contextmanager
def fleet(batch: int) -> Iterator[tuple[dict[str, str], Callable[[int], None]]]:
    """A throwaway home, migrated; a PostgreSQL-backed Prefect server; batches of `batch`.
    Yields the workers' environment and a function setting the `gpu` limit's slots."""
    sys.path.insert(0, str(HERE))
    from common import migrated_engine, prefect_server, throwaway_home

    throwaway_home()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["STAVE_BATCH_SIZE"] = str(batch)
    os.environ["STAVE_PUBLISH_PAGES"] = "false"
    settings, _ = migrated_engine()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from stave.infra.db import database_url

    with prefect_server() as api, temporary_settings({PREFECT_API_URL: api}):
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "STAVE_DATABASE_URL": database_url(settings),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=settings.gpu_concurrency_limit, limit=1)
            )

        def slots(n: int) -> None:
            with get_client(sync_client=True) as client:
                client.update_global_concurrency_limit(
                    settings.gpu_concurrency_limit, GlobalConcurrencyLimitUpdate(limit=n)
                )

        yield env, slots


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--batches", type=int, default=8, help="batches per worker")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-seconds", type=float, default=8.0)
    parser.add_argument("--duration", type=float, default=1.0, help="clip seconds")
    parser.add_argument("--claimers", type=int, default=64)
    parser.add_argument("--claim-tasks", type=int, default=5000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sizes = [int(n) for n in args.workers.split(",")]
    rows = []
    with fleet(args.batch) as (env, slots):
        for n in sizes:
            slots(n)  # one slot per simulated GPU
            rows.append(drain_with(n, args, env))
            print(json.dumps(rows[-1]), flush=True)
    claims = claim_race(args.claimers, args.claim_tasks, args.batch)

    one = next((r["rate"] for r in rows if r["workers"] == 1), None)
    print(f"\nstand-in: {args.batch} clips of {args.duration} s per {args.batch_seconds} s batch")
    print(
        f"{'workers':>7} {'clips':>6} {'seconds':>8} {'clips/s':>8} {'ideal':>7} {'eff.':>6}"
        f" {'cores busy':>10}"
    )
    for r in rows:
        ideal = one * r["workers"] if one else float("nan")
        eff = r["rate"] / ideal if one else float("nan")
        target = TARGETS.get(r["workers"])
        met = "met" if target is not None and eff >= target else "NOT met"
        mark = "" if target is None else f"  target >= {target}: {met}"
        print(
            f"{r['workers']:>7} {r['clips']:>6} {r['seconds']:>8.1f} {r['rate']:>8.1f}"
            f" {ideal:>7.1f} {eff:>6.2f} {r['cores_busy']:>10.2f}{mark}"
        )
    print(
        f"\nclaim race: {claims['claimers']} processes, {claims['tasks']} tasks: "
        f"{claims['claimed']} claimed, {claims['claimed_twice']} twice, "
        f"{claims['claims_per_s']} claims/s, busiest claimer {claims['busiest_claimer']}"
    )
    print(json.dumps({"scaling": rows, "claims": claims}))


if __name__ == "__main__":
    main()
