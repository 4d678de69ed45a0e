"""Latent backfill throughput: the whole backfill path vs the encoder alone, same clips, same run.

N real 10-s FLAC clips are put in the store with their asset rows. Then, `--repeat` times:
- encoder alone: the clips decoded into memory first (not timed), then the encoder over them in
  the backfill's windows (`STAVE_BACKFILL_WINDOW`, same grouping): embeddings/s of the model;
- backfill: `run_backfill` with `process_batch`, as the flow's batches run it: objects read and
  checked against their sha256 in parallel threads, decoded, the next window read while this
  one is encoded, vectors written with binary COPY and the run's cursor moved in the same
  transaction; embeddings/s written. The vectors are deleted between repeats.
Target: backfill / encoder alone >= 0.8 (the median of the repeats).

Run: .venv/bin/python bench/backfill_throughput.py [--clips 256] [--duration 10] [--repeat 3]
(a throwaway STAVE_HOME with the embedded PostgreSQL and filesystem store unless set.)
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import migrated_engine, throwaway_home

TARGET = 0.8


def make_clips(engine: object, store: object, n: int, duration: float, env: str) -> None:
    """n distinct FLAC clips (tones over noise) in the store, with their asset rows."""
    from stave.infra.objectstore.keys import audio_key
    from stave.infra.pgraw import copy_in
    from stave.models.base import new_id
    from stave.tasks.storage import encode_flac

    rate = 16_000
    t = np.arange(int(duration * rate)) / rate
    rng = np.random.default_rng(0)
    start = datetime(2004, 1, 1, tzinfo=UTC)
    columns = (
        "id, user_id, object_key, sha256, bytes, format, sample_rate, channels, duration_s, "
        "created_at"
    )
    with copy_in(engine, f"COPY audio_asset ({columns}) FROM STDIN") as copy:  # type: ignore[arg-type]
        for i in range(n):
            tone = 0.3 * np.sin(2 * np.pi * (110 + 7 * i) * t) + 0.05 * rng.standard_normal(t.size)
            data = encode_flac(tone.astype(np.float32), rate)
            asset_id = new_id()
            key = audio_key(env, asset_id, "flac")
            info = store.put_bytes(key, data, content_type="audio/flac")  # type: ignore[attr-defined]
            copy.write_row(
                (asset_id, "bench", key, info.sha256, len(data), "flac", rate, 1, duration,
                 start + timedelta(milliseconds=i))
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    throwaway_home()
    settings, engine = migrated_engine()

    import soundfile
    from sqlalchemy import text

    from stave.infra.objectstore import make_object_store
    from stave.tasks import backfill
    from stave.tasks.encoders import load_encoder

    store = make_object_store(settings)
    make_clips(engine, store, args.clips, args.duration, settings.env)
    encoder = load_encoder(engine, settings, None, None)
    window = settings.backfill_window
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT object_key FROM audio_asset ORDER BY created_at")).all()
    decoded = [soundfile.read(io.BytesIO(store.get_bytes(k)), dtype="float32") for (k,) in keys]
    encoder.embed_many([(a, r) for a, r in decoded[:window]])  # warm-up
    print(
        f"{args.clips} clips of {args.duration:g} s; windows of {window}, "
        f"{settings.backfill_fetch_threads} fetch threads, "
        f"batches of {settings.backfill_batch_size}"
    )
    ratios, rows = [], []
    for run in range(args.repeat):
        started = time.perf_counter()
        for at in range(0, len(decoded), window):
            encoder.embed_many([(a, r) for a, r in decoded[at : at + window]])
        alone = args.clips / (time.perf_counter() - started)

        with engine.begin() as conn:
            conn.execute(text("DELETE FROM latent_embedding"))
        scope = backfill.resolve_scope(engine, encoder.version, None, None, None)

        def process(
            run_: backfill.Run, refs: list[backfill.AssetRef], cursor: object
        ) -> backfill.BatchResult:
            return backfill.process_batch(
                engine, store, encoder, run_, refs, cursor,  # type: ignore[arg-type]
                settings.backfill_fetch_threads, window=window,
            )  # fmt: skip

        started = time.perf_counter()
        _, progress, status = backfill.run_backfill(
            engine,
            scope,
            process,  # type: ignore[arg-type]
            settings.backfill_batch_size,
        )
        seconds = time.perf_counter() - started
        with engine.connect() as conn:
            written = conn.execute(text("SELECT count(*) FROM latent_embedding")).scalar_one()
        assert status == "completed" and written == args.clips, (status, written, progress)
        rate = written / seconds
        ratios.append(rate / alone)
        rows.append((alone, rate))
        print(
            f"run {run + 1}: encoder alone {alone:7.1f} emb/s | backfill {rate:7.1f} emb/s "
            f"| backfill / alone {rate / alone:.2f}",
            flush=True,
        )
    ratio = statistics.median(ratios)
    print(
        f"median backfill / encoder alone: {ratio:.2f} (target >= {TARGET}: "
        f"{'met' if ratio >= TARGET else 'NOT met'}); runs " + ", ".join(f"{r:.2f}" for r in ratios)
    )


if __name__ == "__main__":
    main()
