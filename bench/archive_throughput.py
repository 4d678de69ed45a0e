"""Archival throughput vs a plain baseline, and peak memory at 100k vs 1M task rows.

For each size, in a fresh database: N generation_task rows (with their jobs) dated a year ago,
vacuumed and analysed as rows half a year old are;
then, each in its own process so peak memory (max RSS) is its own:
- baseline: `COPY (SELECT * FROM generation_task …) TO STDOUT (FORMAT csv)` streamed through
  pyarrow's CSV reader into a zstd Parquet file (read-only: it moves nothing);
- stave (cli): what `stave archive run` does (`archive.plan`, then `archive.run_archive`),
  over the same rows: read as
  binary COPY through the ADBC driver into Arrow, Parquet written to the store, read back and
  checked, rows deleted in one transaction per group, jobs after their tasks;
- stave (flow): the scheduled path, the `archive_old_records` flow (Prefect's ephemeral API,
  started before the clock), each group a Prefect task around the same `process_group`, over
  a fresh fill of the same size.
Targets: rows/s of stave / rows/s of baseline >= 0.6 on both paths; peak memory flat and under
500 MB.

Run: .venv/bin/python bench/archive_throughput.py [--sizes 100000 1000000] [--repeat 3]
     [--paths cli flow]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET = 0.6
WHEN = datetime.now(UTC) - timedelta(days=365)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill(n: int) -> None:
    from common import migrated_engine

    from stave.infra.pgraw import driver_connection
    from stave.models.base import new_id

    _, engine = migrated_engine()
    jobs = [new_id() for _ in range(max(1, n // 1000))]
    with driver_connection(engine) as conn:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY generation_job (id, submitted_by, parameters, total_rows, accepted_rows, "
                "rejected_rows, rejections, created_at) FROM STDIN"
            ) as copy:
                for job in jobs:
                    copy.write_row((job, "bench", "{}", 1000, 1000, 0, "[]", WHEN))
            with cur.copy(
                "COPY generation_task (id, job_id, user_id, prompt, parameters, idempotency_key, "
                "status, attempts, max_attempts, timings, provenance, created_at) FROM STDIN"
            ) as copy:
                for i in range(n):
                    params = json.dumps({"steps": 16, "guidance": 3.0, "seed": i})
                    provenance = json.dumps(
                        {
                            "prompt": f"warm organ chords {i}",
                            "actual_seeds": [i],
                            "device": "cpu",
                            "dtype": "float32",
                            "checkpoint_sha256": "0" * 64,
                        }
                    )
                    copy.write_row(
                        (
                            new_id(),
                            jobs[i // 1000],
                            "bench",
                            f"warm organ chords in A minor {i}",
                            params,
                            f"bench-{i}",
                            "failed",
                            3,
                            3,
                            "{}",
                            provenance,
                            WHEN + timedelta(seconds=i),
                        )
                    )
        conn.commit()
    # Rows half a year old have long been vacuumed and analysed in production: so here too
    # (the visibility map lets index walks skip the heap; the planner sees the real sizes).
    # And checkpointed: no checkpoint of the fill's gigabytes is still writing while either
    # side is timed, and the deletes log their first touch of each page in full, as they do
    # in production.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        conn.execute(text("CHECKPOINT"))


def baseline() -> dict[str, float]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    from common import migrated_engine

    settings, engine = migrated_engine()
    out = Path(tempfile.mkdtemp(dir=settings.tmp_dir)) / "baseline.parquet"
    read, write = os.pipe()
    raw = engine.raw_connection()
    started = time.perf_counter()
    rows = 0
    try:
        conn = raw.driver_connection
        assert conn is not None

        def produce() -> None:
            with (
                os.fdopen(write, "wb") as sink,
                conn.cursor() as cur,
                cur.copy(
                    "COPY (SELECT * FROM generation_task "
                    "WHERE created_at < now() - interval '183 days') TO STDOUT (FORMAT csv, HEADER)"
                ) as copy,
            ):
                for data in copy:
                    sink.write(data)

        import threading

        producer = threading.Thread(target=produce)
        producer.start()
        with os.fdopen(read, "rb") as source:
            reader = pcsv.open_csv(source)
            with pq.ParquetWriter(out, reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        producer.join()
    finally:
        raw.close()
    return {"seconds": time.perf_counter() - started, "rows": rows, "peak_mb": peak_mb()}


def ours() -> dict[str, float]:
    # Imported before the clock starts, as the baseline's are.
    import pyarrow.compute
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401
    from common import migrated_engine

    from stave.infra.objectstore import make_object_store
    from stave.tasks import archive

    settings, engine = migrated_engine()
    started = time.perf_counter()
    archive.plan(engine, None)  # as `stave archive run` (and the flow) count first
    result = archive.run_archive(
        engine,
        make_object_store(settings),
        settings.tmp_dir / "archive",
        batch_size=settings.archive_batch_size,
        env_name=settings.env,
    )
    return {
        "seconds": time.perf_counter() - started,
        "rows": result.rows.get("generation_task", 0),
        "peak_mb": peak_mb(),
    }


def through_the_flow() -> dict[str, float]:
    import pyarrow.compute
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401
    from common import migrated_engine
    from prefect import flow

    from stave.flows.archive import archive_old_records

    settings, _ = migrated_engine()

    @flow
    def warm_up() -> None:
        """Start Prefect's ephemeral API before the clock, as a worker's server is running."""

    warm_up()
    started = time.perf_counter()
    summary = archive_old_records(batch_size=settings.archive_batch_size)
    return {
        "seconds": time.perf_counter() - started,
        "rows": summary["rows"].get("generation_task", 0),
        "peak_mb": peak_mb(),
    }


def child(step: str, home: str, n: int = 0) -> dict[str, float]:
    env = {**os.environ, "STAVE_HOME": home}
    done = subprocess.run(
        [sys.executable, __file__, "--step", step, "--n", str(n)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{step} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_size(n: int, path: str) -> tuple[dict[str, float], dict[str, float]]:
    """Fill a throwaway home with n task rows, time the baseline and one of Stave's paths,
    then remove the home (a million rows with their WAL take gigabytes)."""
    home = tempfile.mkdtemp(prefix="stave-bench-archive-")
    try:
        child("fill", home, n)
        base = child("baseline", home)
        mine = child("ours" if path == "cli" else "flow", home)
        assert base["rows"] == n and mine["rows"] == n, (base, mine)
        return base, mine
    finally:
        subprocess.run(
            [str(Path(sys.executable).parent / "stave"), "db", "stop"],
            env={**os.environ, "STAVE_HOME": home},
            capture_output=True,
            check=False,
        )
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--step", choices=["fill", "baseline", "ours", "flow"])
    parser.add_argument("--paths", nargs="*", default=["cli", "flow"], choices=["cli", "flow"])
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (fresh rows each)")
    args = parser.parse_args()
    if args.step:
        if args.step == "fill":
            fill(args.n)
            print(json.dumps({"ok": 1}))
        else:
            steps = {"baseline": baseline, "ours": ours, "flow": through_the_flow}
            print(json.dumps(steps[args.step]()))
        return

    print(
        f"{'task rows':>10}{'path':>6}{'baseline s':>12}{'stave s':>9}{'ratio':>7}"
        f"{'baseline MB':>13}{'stave MB':>10}"
    )
    for n in args.sizes:
        for path in args.paths:
            ratios = []
            for _ in range(args.repeat):
                base, mine = one_size(n, path)
                ratios.append(base["seconds"] / mine["seconds"])
                print(
                    f"{n:>10}{path:>6}{base['seconds']:>12.1f}{mine['seconds']:>9.1f}"
                    f"{ratios[-1]:>7.2f}{base['peak_mb']:>13.0f}{mine['peak_mb']:>10.0f}"
                )
            if args.repeat > 1:
                median = statistics.median(ratios)
                print(f"{n:>10}{path:>6}  median ratio of {args.repeat} runs: {median:.2f}")
    print(f"targets: ratio >= {TARGET}; stave's peak memory flat across sizes and < 500 MB")


if __name__ == "__main__":
    main()
