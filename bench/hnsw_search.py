"""Sounds-alike search at scale: HNSW vs exact, recall and latency, through `stave.tasks.search`.

Loads N unit vectors of realistic structure (clustered like clip embeddings: families of
styles of clips) for one encoder version, builds its HNSW index with Stave's settings, then
asks `search.similar` for the 10 nearest neighbours of held-out queries, first exactly (the
baseline, a sequential scan in the same function) and then through the index at several
ef_search values. Recall@10 is measured against the exact answer.
Targets: recall@10 >= 0.95, p99 <= 10 ms, speed-up vs exact >= 50x.

Run: .venv/bin/python bench/hnsw_search.py [--n 100000] [--queries 200]
(a throwaway STAVE_HOME with the embedded PostgreSQL unless set.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bulk_assets, copy_embeddings, migrated_engine, settled, throwaway_home

TARGETS = {"recall": 0.95, "p99_ms": 10.0, "speedup": 50.0}
VERSION = "bench-hnsw"


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors with the structure of clip embeddings: families (timbres) of styles
    (patterns, keys, tempi) of clips, styles of uneven popularity. The family and style
    centres come from seed 0 (shared by the data and the queries); the clips from `seed`."""
    shared = np.random.default_rng(0)
    families = shared.standard_normal((32, 512))
    styles = np.repeat(families, 32, axis=0) + 0.6 * shared.standard_normal((1024, 512))
    weights = shared.pareto(1.5, len(styles)) + 1
    spread = shared.uniform(0.25, 0.45, len(styles))
    rng = np.random.default_rng(seed)
    members = rng.choice(len(styles), n, p=weights / weights.sum())
    points = styles[members] + spread[members, None] * rng.standard_normal((n, 512))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reload", action="store_true", help="load the vectors again")
    parser.add_argument("--ef", type=int, nargs="*", default=[16, 32, 64, 128, 256])
    args = parser.parse_args()
    throwaway_home()

    from sqlalchemy import text

    from stave.tasks import search, vector_index

    settings, engine = migrated_engine()
    with engine.connect() as conn:
        loaded = conn.execute(
            text("SELECT count(*) FROM latent_embedding WHERE encoder_version = :v"),
            {"v": VERSION},
        ).scalar_one()
    data = clustered(args.n, seed=1)
    if args.reload and loaded:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "DELETE FROM audio_asset WHERE id IN (SELECT asset_id FROM latent_embedding "
                    "WHERE encoder_version = :v)"
                ),
                {"v": VERSION},
            )
        loaded = 0
    if loaded != args.n:
        ids, _ = bulk_assets(engine, args.n, datetime(2004, 1, 1, tzinfo=UTC))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # Load first, index after: growing an HNSW graph row by row is far slower.
            name = vector_index.index_name(VERSION)
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
        started = time.perf_counter()
        copy_embeddings(engine, ids, data, VERSION)
        print(f"loaded {args.n} vectors in {time.perf_counter() - started:.1f} s")
    settled(engine, "latent_embedding")
    started = time.perf_counter()
    index = vector_index.rebuild(engine, VERSION, settings)
    build_s = time.perf_counter() - started
    print(
        f"HNSW build (m={index.m}, ef_construction={index.ef_construction}): {build_s:.1f} s, "
        f"{index.bytes / 2**20:.0f} MiB"
    )

    queries = clustered(args.queries, seed=2)  # same styles (same centres), unseen points
    ground_truth = [set(np.argsort(1 - data @ q)[:10]) for q in queries]
    with engine.connect() as conn:
        position = {
            row[0]: i
            for i, row in enumerate(
                conn.execute(
                    text(
                        "SELECT e.asset_id FROM latent_embedding e JOIN audio_asset a "
                        "ON a.id = e.asset_id WHERE e.encoder_version = :v "
                        "ORDER BY a.created_at, a.id"
                    ),
                    {"v": VERSION},
                )
            )
        }

    def run(ef: int | None) -> tuple[float, list[float]]:
        timings, hits = [], 0
        tuned = settings.model_copy(update={"hnsw_ef_search": ef or settings.hnsw_ef_search})
        for q, truth in zip(queries, ground_truth, strict=True):
            started = time.perf_counter()
            result = search.similar(
                engine, tuned, vector=q, k=10, encoder_version=VERSION, exact=ef is None
            )
            timings.append((time.perf_counter() - started) * 1000)
            assert result.method == ("exact" if ef is None else "hnsw"), result.method
            hits += len({position[n.asset_id] for n in result.neighbours} & truth)
        return hits / (10 * len(queries)), timings

    run(64)  # warm the caches and the connection pool
    exact_recall, exact_ms = run(None)
    exact_p50 = statistics.median(exact_ms)
    print(f"exact scan through search.similar: recall {exact_recall:.3f}, p50 {exact_p50:.1f} ms")
    print(f"{'ef_search':>9}{'recall@10':>11}{'p50 ms':>9}{'p99 ms':>9}{'speed-up':>10}")
    best = None
    for ef in args.ef:
        recall, ms = run(ef)
        p50, p99 = statistics.median(ms), float(np.percentile(ms, 99))
        speedup = exact_p50 / p50
        print(f"{ef:>9}{recall:>11.3f}{p50:>9.2f}{p99:>9.2f}{speedup:>9.0f}x")
        meets = (
            recall >= TARGETS["recall"]
            and p99 <= TARGETS["p99_ms"]
            and speedup >= TARGETS["speedup"]
        )
        if meets and best is None:
            best = ef
    configured = settings.hnsw_ef_search
    print(
        f"targets: recall@10 >= {TARGETS['recall']}, p99 <= {TARGETS['p99_ms']} ms, "
        f"speed-up >= {TARGETS['speedup']:.0f}x; lowest ef_search meeting all: {best} "
        f"(configured: {configured})"
    )


if __name__ == "__main__":
    main()
