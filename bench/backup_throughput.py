"""Backup to the object store vs plain `pg_dump -Fc` to a local file, same database, same run.

Builds a database of at least --gb GiB (latent_embedding rows with 512-d vectors, plus their
assets), then times `pg_dump -Fc -f FILE` (the baseline) and Stave's backup (pg_dump streamed
into the store under an exported snapshot, with row counts and a manifest), and the restore
drill. Target: baseline time / Stave time >= 0.8.

Run: .venv/bin/python bench/backup_throughput.py [--gb 1.0]
(a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless set.)
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TARGET = 0.8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import throwaway_home

    throwaway_home()

    from stave.infra import migrate
    from stave.infra.db import database_url, get_engine, libpq_target
    from stave.infra.embedded_pg import bin_dir
    from stave.infra.objectstore import make_object_store
    from stave.infra.settings import get_settings
    from stave.tasks import backup

    settings = get_settings()
    url = database_url(settings)
    migrate.upgrade(url)
    engine = get_engine(settings)
    fill(engine, url, args.gb)
    with engine.connect() as conn:
        size = conn.execute(
            __import__("sqlalchemy").text("SELECT pg_database_size(current_database())")
        ).scalar_one()
    print(f"database size: {size / 2**30:.2f} GiB")

    target, env = libpq_target(url)
    out = os.path.join(settings.tmp_dir, "baseline.dump")
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [str(bin_dir() / "pg_dump"), "-Fc", "-f", out, f"--dbname={target}"], check=True, env=env
    )
    baseline = time.perf_counter() - started
    baseline_bytes = os.path.getsize(out)
    os.unlink(out)

    store = make_object_store(settings)
    started = time.perf_counter()
    result = backup.run_backup(engine, store, url=url, env_name=settings.env)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    backup.drill(engine, store, backup.get_backup(engine, str(result.id)), url=url)
    drill = time.perf_counter() - started

    mib = size / 2**20
    rows = [
        ("pg_dump -Fc to a local file", baseline, baseline_bytes),
        ("stave backup (to the store)", ours, result.bytes),
    ]
    print(f"{'':<34}{'seconds':>9}{'MiB out':>9}{'MiB/s of db':>13}")
    for name, seconds, written in rows:
        print(f"{name:<34}{seconds:>9.1f}{written / 2**20:>9.1f}{mib / seconds:>13.1f}")
    print(f"{'restore drill':<34}{drill:>9.1f}   (verify sha256, pg_restore, compare counts)")
    ratio = baseline / ours
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"ratio baseline/stave: {ratio:.2f} ({verdict} >= {TARGET})")


def fill(engine: object, url: str, gb: float) -> None:
    """Assets and 512-d embeddings by binary COPY until the database holds `gb` GiB."""
    import uuid

    import psycopg
    from sqlalchemy import text

    from stave.infra.db import psycopg_dsn

    rows = int(gb * 2**30 / 2600)  # about 2.6 KB per asset + embedding row with indexes
    with engine.connect() as conn:  # type: ignore[attr-defined]
        have = conn.execute(text("SELECT count(*) FROM latent_embedding")).scalar_one()
    if have >= rows:
        return
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 512)).astype(np.float32)
    with psycopg.connect(psycopg_dsn(url)) as conn:
        conn.execute("DROP INDEX IF EXISTS ix_latent_embedding_hnsw_cosine")
        batch = 20_000
        for start in range(have, rows, batch):
            n = min(batch, rows - start)
            assets = [uuid.uuid4() for _ in range(n)]
            with conn.cursor().copy(
                "COPY audio_asset (id, user_id, object_key, sha256, bytes, format, sample_rate, "
                "channels, duration_s) FROM STDIN"
            ) as copy:
                for a in assets:
                    copy.write_row(
                        (
                            a,
                            "bench",
                            f"dev/audio/{a}.flac",
                            "0" * 64,
                            160000,
                            "flac",
                            16000,
                            1,
                            10.0,
                        )
                    )
            vectors = centres[rng.integers(0, 64, n)] + 0.3 * rng.normal(size=(n, 512)).astype(
                np.float32
            )
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            buffer = io.StringIO()
            for a, v in zip(assets, vectors, strict=True):
                buffer.write(f"{uuid.uuid4()}\t{a}\tbench\t[{','.join(f'{x:.6f}' for x in v)}]\n")
            buffer.seek(0)
            with conn.cursor().copy(
                "COPY latent_embedding (id, asset_id, encoder_version, embedding) FROM STDIN"
            ) as copy:
                while chunk := buffer.read(1 << 20):
                    copy.write(chunk)
            conn.commit()
            print(f"  filled {start + n}/{rows} rows", flush=True)


if __name__ == "__main__":
    main()
