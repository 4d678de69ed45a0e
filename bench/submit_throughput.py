"""Submission at scale: `stave submit` of 100k and 1M-row CSVs vs a raw COPY of the same rows.

For each size, a CSV of N prompt rows (a prompt, and a duration and a seed on some rows) is
written once; then, `--repeat` times:
- stave: `stave submit FILE --json` in a fresh process (reading, checking every row, deriving
  keys and defaults, writing job, revisions, tasks and events); rows/s and the process's peak
  RSS (from wait4, so the whole process counts);
- raw: the rows stave wrote for that job, dumped once with COPY TO, then COPY'd back (text
  format, one statement) into an unindexed copy of generation_task (`LIKE generation_task`):
  what the database alone needs to take the same rows.
Each stave run submits a file of fresh content (the rows differ by a run number), so every run
writes N tasks. Targets: >= 20,000 rows/s, peak RSS < 500 MB and flat from 100k to 1M.

`--login app` submits as a login in stave_app, as production does (subject to row-level
security, so the rows go through temporary tables; write.py), instead of the embedded server's
superuser.

Run: .venv/bin/python bench/submit_throughput.py [--sizes 100000,1000000] [--repeat 3]
[--login superuser|app] (a throwaway STAVE_HOME with the embedded PostgreSQL unless set.)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import migrated_engine, settled, throwaway_home

RATE_TARGET = 20_000
RATE_TARGET_ROWS = 1_000_000
RSS_TARGET_MB = 500
STYLES = ("warm organ chords", "bright synth arpeggio", "slow piano ballad", "dusty drum loop")
KEYS = ("A minor", "C major", "E minor", "G major", "D minor")


def write_prompts(path: Path, n: int, run: int) -> None:
    """N rows: prompts vary by row (and by run, so a run's rows are new); every third row
    sets its duration, every fifth its seed."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["prompt", "duration_s", "seed"])
        for i in range(n):
            prompt = (
                f"{STYLES[i % len(STYLES)]} in {KEYS[i % len(KEYS)]}, {60 + i % 100} bpm, "
                f"take {run}-{i}"
            )
            out.writerow([prompt, "10" if i % 3 == 0 else "", str(i) if i % 5 == 0 else ""])


def app_login_url(engine: Any) -> str:
    """The URL of a LOGIN user in stave_app, made for this run (the home goes with it)."""
    from sqlalchemy import text

    from stave.infra.roles import APP

    with engine.begin() as conn:
        conn.execute(
            text(f"DROP ROLE IF EXISTS bench_app; CREATE ROLE bench_app LOGIN IN ROLE {APP}")
        )
    return str(engine.url.set(username="bench_app").render_as_string(hide_password=False))


def stave_submit(path: Path, env: dict[str, str]) -> tuple[float, float, dict[str, object]]:
    """Seconds, peak RSS (MB) and the JSON summary of one `stave submit` process.

    The peak is the process's own high-water mark (VmHWM, which exec resets), read until it
    exits: wait4's ru_maxrss would count the pages of this process it was forked from."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stave", "submit", str(path), "--json"],
            stdout=out,
            stderr=err,
            env=env,
        )
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, _high_water_kb(proc.pid))
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"stave submit failed ({proc.returncode}): {err.read()[-2000:]!r}")
        out.seek(0)
        return seconds, peak_kb / 1024, json.loads(out.read())


def _high_water_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def raw_copy(engine: object, job_id: str) -> tuple[float, int]:
    """Seconds to COPY the job's task rows into an unindexed copy of generation_task."""
    from stave.infra.pgraw import driver_connection

    columns = (
        "id, job_id, user_id, prompt_revision_id, prompt, lyrics, parameters, idempotency_key, "
        "status, attempts, max_attempts, created_at"
    )
    with driver_connection(engine) as conn, tempfile.TemporaryFile() as spool:  # type: ignore[arg-type]
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_raw_task")
            cur.execute(
                "CREATE UNLOGGED TABLE bench_raw_task (LIKE generation_task INCLUDING DEFAULTS)"
            )
            with cur.copy(
                f"COPY (SELECT {columns} FROM generation_task WHERE job_id = %s) TO STDOUT",
                (job_id,),
            ) as copy:
                for block in copy:
                    spool.write(block)
        conn.commit()
        spool.seek(0)
        started = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(f"COPY bench_raw_task ({columns}) FROM STDIN") as copy:
                while block := spool.read(1 << 20):
                    copy.write(block)
            rows = cur.rowcount
        conn.commit()
        seconds = time.perf_counter() - started
        with conn.cursor() as cur:
            cur.execute("DROP TABLE bench_raw_task")
        conn.commit()
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--login", choices=("superuser", "app"), default="superuser")
    args = parser.parse_args()
    throwaway_home()
    _, engine = migrated_engine()
    env = dict(os.environ)
    if args.login == "app":
        env["STAVE_DATABASE_URL"] = app_login_url(engine)
    print(f"submitting as: {args.login}")
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="stave-bench-submit-") as folder:
        for n in sizes:
            results[n] = []
            for run in range(args.repeat):
                path = Path(folder) / f"prompts-{n}-{run}.csv"
                write_prompts(path, n, run)
                settled(engine, "generation_task", "task_event", "prompt_revision")
                seconds, rss, summary = stave_submit(path, env)
                path.unlink()
                if summary["accepted"] != n:
                    raise SystemExit(f"expected {n} accepted, got {summary}")
                raw_s, raw_rows = raw_copy(engine, str(summary["job_id"]))
                assert raw_rows == n, raw_rows
                results[n].append((n / seconds, rss, n / raw_s))
                print(
                    f"{n:>9} rows run {run + 1}: stave {seconds:6.1f} s "
                    f"{n / seconds:>8,.0f} rows/s "
                    f"peak RSS {rss:5.0f} MB | raw COPY {raw_s:5.1f} s {n / raw_s:>8,.0f} rows/s "
                    f"| stave/raw {raw_s / seconds:.2f}",
                    flush=True,
                )
    print("\nmedians:")
    for n, runs in results.items():
        rate = statistics.median(r for r, _, _ in runs)
        rss = statistics.median(m for _, m, _ in runs)
        raw = statistics.median(r for _, _, r in runs)
        # The rate target is a million-row file's (a smaller one weighs the process's start).
        verdict = "met" if rate >= RATE_TARGET else "NOT met"
        if n < RATE_TARGET_ROWS:
            verdict = f"for {RATE_TARGET_ROWS:,} rows"
        print(
            f"{n:>9} rows: stave {rate:>8,.0f} rows/s (target >= {RATE_TARGET:,}: "
            f"{verdict}), peak RSS {rss:.0f} MB (target < "
            f"{RSS_TARGET_MB}: {'met' if rss < RSS_TARGET_MB else 'NOT met'}); raw COPY "
            f"{raw:>8,.0f} rows/s; stave/raw {rate / raw:.2f}"
        )
    if len(sizes) > 1:
        low, high = (statistics.median(m for _, m, _ in results[n]) for n in (sizes[0], sizes[-1]))
        print(f"peak RSS {sizes[-1]:,} / {sizes[0]:,} rows: {high / low:.2f} (flat: ~1)")


if __name__ == "__main__":
    main()
