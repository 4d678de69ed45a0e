"""Backfill write rate (no model time) vs raw binary COPY of the same vectors, same run.

Makes N assets, then writes N unit vectors for a new encoder version two ways, alternating:
- raw: one binary COPY into an unindexed table (`vectors (asset_id uuid, embedding vector)`);
- stave: the backfill's write path (`stave.tasks.backfill.write_batch`), batch by batch, one
  transaction each with the fenced checkpoint update: binary COPY straight into
  latent_embedding (its primary key, unique key and foreign key all checked);
- stave, conflict path: the same batches when each meets a conflict (the vectors are already
  there): the COPY is rolled back to its savepoint and the batch goes through the staging table
  and `INSERT … ON CONFLICT DO UPDATE`. Reported for reference: it is the rare path.
Target: stave rate / raw rate >= 0.7.

Run: .venv/bin/python bench/backfill_write.py [--n 100000] [--batch N] [--repeat 3]
(a throwaway STAVE_HOME with the embedded PostgreSQL unless set.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bulk_assets, migrated_engine, settled, throwaway_home

TARGET = 0.7


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=None, help="default: backfill_batch_size")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    throwaway_home()

    from sqlalchemy import text

    from stave.models.base import new_id
    from stave.tasks import backfill

    settings, engine = migrated_engine()
    args.batch = args.batch or settings.backfill_batch_size

    start = datetime(2003, 1, 1, tzinfo=UTC)
    ids, created = bulk_assets(engine, args.n, start)
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE IF NOT EXISTS bench_raw (asset_id uuid, embedding vector(512))")
        )
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    print(f"{args.n} assets, {args.n} vectors of 512 float32; stave batches of {args.batch}")

    def raw_copy() -> float:
        conn = engine.raw_connection()
        try:
            with conn.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                cur.execute("TRUNCATE bench_raw")
                conn.driver_connection.commit()  # type: ignore[union-attr]
                started = time.perf_counter()
                with cur.copy(
                    "COPY bench_raw (asset_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["uuid", "vector"])
                    for asset_id, vector in zip(ids, vectors, strict=True):
                        copy.write_row((asset_id, vector))
                conn.driver_connection.commit()  # type: ignore[union-attr]
                return time.perf_counter() - started
        finally:
            conn.close()

    def keyed_copy() -> float:
        """The floor for any write into latent_embedding: one plain COPY of the same rows into
        a table with its keys, foreign key and storage, no staging and no checkpoints."""
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_keyed"))
            conn.execute(
                text(
                    "CREATE TABLE bench_keyed (LIKE latent_embedding INCLUDING ALL, "
                    "FOREIGN KEY (asset_id) REFERENCES audio_asset (id) ON DELETE CASCADE)"
                )
            )
            conn.execute(text("ALTER TABLE bench_keyed SET (autovacuum_enabled = false)"))
        settled_now()
        conn = engine.raw_connection()
        try:
            with conn.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                started = time.perf_counter()
                with cur.copy(
                    "COPY bench_keyed (id, asset_id, encoder_version, embedding) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["uuid", "uuid", "varchar", "vector"])
                    for asset_id, vector in zip(ids, vectors, strict=True):
                        copy.write_row((new_id(), asset_id, "bench", vector))
                conn.driver_connection.commit()  # type: ignore[union-attr]
                return time.perf_counter() - started
        finally:
            conn.close()

    def stave_write(conflicts: bool) -> float:
        version = f"bench-{uuid.uuid4().hex[:8]}"
        scope = backfill.resolve_scope(engine, version, start, start + timedelta(days=1))
        if conflicts:  # every vector is already there: each batch takes the upsert path
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO latent_embedding (id, asset_id, encoder_version, embedding) "
                        "SELECT gen_random_uuid(), asset_id, :v, embedding FROM bench_raw"
                    ),
                    {"v": version},
                )
        run = backfill.open_run(engine, scope)
        cursor = None
        paths = set()
        started = time.perf_counter()
        for at in range(0, args.n, args.batch):
            end = min(at + args.batch, args.n)
            result = backfill.BatchResult(
                vectors=list(zip(ids[at:end], vectors[at:end], strict=True))
            )
            last = (created[end - 1], ids[end - 1])
            assert backfill.write_batch(engine, run, cursor, last, result)
            paths.add(result.path)
            cursor = last
        seconds = time.perf_counter() - started
        assert paths == {"upsert" if conflicts else "copy"}, paths
        backfill.finish_run(engine, run.id, "completed")
        with engine.begin() as conn:
            written = conn.execute(
                text("SELECT count(*) FROM latent_embedding WHERE encoder_version = :v"),
                {"v": version},
            ).scalar_one()
            assert written == args.n, written
            conn.execute(
                text("DELETE FROM latent_embedding WHERE encoder_version = :v"), {"v": version}
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM latent_embedding"))
        return seconds

    def settled_now() -> None:
        settled(engine, "latent_embedding", "bench_raw")

    with engine.begin() as conn:
        for table in ("latent_embedding", "bench_raw"):
            conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
    raws: list[float] = []
    ours: list[float] = []
    upserts: list[float] = []
    floors: list[float] = []
    try:
        for _ in range(args.repeat):
            settled_now()
            raws.append(raw_copy())
            settled_now()
            ours.append(stave_write(conflicts=False))
            settled_now()
            upserts.append(stave_write(conflicts=True))
            floors.append(keyed_copy())
    finally:
        with engine.begin() as conn:
            for table in ("latent_embedding", "bench_raw"):
                conn.execute(text(f"ALTER TABLE {table} RESET (autovacuum_enabled)"))
    print(f"{'':<44}{'best s':>8}{'median s':>10}{'vectors/s':>12}")
    for name, runs in (
        ("raw binary COPY (unindexed table)", raws),
        ("stave write path", ours),
        ("stave, every batch conflicting (upsert)", upserts),
        ("floor: one COPY into a keyed table", floors),
    ):
        best, median = min(runs), statistics.median(runs)
        print(f"{name:<44}{best:>8.2f}{median:>10.2f}{args.n / best:>12.0f}")
    ratio = min(raws) / min(ours)
    by_median = statistics.median(raws) / statistics.median(ours)
    verdict = "meets" if ratio >= TARGET else "misses"
    print(
        f"ratio stave/raw (rate): {ratio:.2f} best-of-{args.repeat}, {by_median:.2f} by "
        f"medians ({verdict} >= {TARGET}); conflict path {min(raws) / min(upserts):.2f}"
    )
    print(
        f"the keys alone (floor/raw): {min(raws) / min(floors):.2f}; stave vs that floor: "
        f"{min(floors) / min(ours):.2f}"
    )


if __name__ == "__main__":
    main()
