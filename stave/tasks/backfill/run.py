"""A backfill batch read, encoded and written; the estimate of a dry run; a whole run."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from stave.infra import stop
from stave.infra.errors import ObjectCorrupted, ObjectNotFound
from stave.infra.objectstore import ObjectStore
from stave.models.assets import EMBEDDING_DIM
from stave.tasks.backfill.pages import AssetRef, next_page
from stave.tasks.backfill.runs import RUNS, count_pending, exclusive, open_run
from stave.tasks.backfill.scope import Scope
from stave.tasks.backfill.write import BatchResult, write_batch
from stave.tasks.encoders import Encoder
from stave.tasks.resumable import Cursor, Progress, Run, Walk, drive


def fetch_audio(
    store: ObjectStore, refs: Sequence[AssetRef], threads: int, result: BatchResult
) -> list[tuple[AssetRef, np.ndarray, int]]:
    """Each asset's audio, read and checked against its recorded sha256, in parallel.

    A missing, corrupted or undecodable object is that asset's failure; the store being down
    (StorageUnavailable) stops the batch, since nothing after it could succeed either.
    """
    started = time.perf_counter()

    def one(ref: AssetRef) -> tuple[AssetRef, np.ndarray, int] | tuple[str, str]:
        import soundfile  # lazy: libsndfile, off the CLI's start-up path

        try:
            data = store.get_bytes(ref.object_key, expected_sha256=ref.sha256)
        except ObjectNotFound:
            missing = f"audio object {ref.object_key} is missing from the store"
            return missing, "storage_unavailable"
        except ObjectCorrupted as err:
            return str(err), "storage_unavailable"
        try:
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            return f"audio object {ref.object_key} is not readable audio: {err}", "input_invalid"
        if audio.size == 0:
            return f"audio object {ref.object_key} has no samples", "input_invalid"
        return ref, audio, int(rate)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(refs)))) as pool:
        outcomes = list(pool.map(one, refs))
    decoded = []
    for ref, outcome in zip(refs, outcomes, strict=True):
        if isinstance(outcome[0], str):
            result.fail(ref, outcome[0], outcome[1])
        else:
            decoded.append(outcome)
    result.fetch_s += time.perf_counter() - started
    return decoded


def encode(
    encoder: Encoder, decoded: Sequence[tuple[AssetRef, np.ndarray, int]], result: BatchResult
) -> None:
    """Vectors for the decoded clips; one that is not a finite unit 512-vector is refused."""
    if not decoded:
        return
    started = time.perf_counter()
    vectors = encoder.embed_many([(audio, rate) for _, audio, rate in decoded])
    result.encode_s += time.perf_counter() - started
    for (ref, _, _), vector in zip(decoded, vectors, strict=True):
        problem = vector_problem(np.asarray(vector))
        if problem:
            result.fail(ref, problem, "model_error")
        else:
            result.vectors.append((ref.id, np.asarray(vector, dtype=np.float32)))


def vector_problem(vector: np.ndarray) -> str | None:
    if vector.shape != (EMBEDDING_DIM,):
        return f"embedding has shape {vector.shape}, expected ({EMBEDDING_DIM},)"
    if not np.all(np.isfinite(vector)):
        return "embedding has NaN or infinite values"
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > 1e-3:
        return f"embedding norm is {norm:.4f}, expected 1 (L2-normalised)"
    return None


def process_batch(
    engine: Engine,
    store: ObjectStore,
    encoder: Encoder,
    run: Run,
    refs: Sequence[AssetRef],
    expected_cursor: Cursor | None,
    threads: int,
    device_slot: AbstractContextManager[Any] | None = None,
    window: int = 64,
) -> BatchResult:
    """Read and encode the batch a window at a time, then commit it in one transaction.

    A batch is the unit of commit and checkpoint (large, so writes go in bulk); a window is the
    unit of memory (only its decoded audio is held: a batch of long clips never is). The next
    window is read while this one is encoded. The device slot is held for the batch's encoding.
    A stop asked meanwhile (Ctrl-C, SIGTERM) abandons the batch between windows: nothing of it
    is written and the cursor stays, so the run resumes with this batch.
    """
    result = BatchResult()
    windows = [refs[i : i + window] for i in range(0, len(refs), window)]
    with ThreadPoolExecutor(max_workers=1) as reader, device_slot or nullcontext():
        upcoming = reader.submit(fetch_audio, store, windows[0], threads, result)
        for position in range(len(windows)):
            decoded = upcoming.result()
            if stop.requested():
                return BatchResult(abandoned=True)
            if position + 1 < len(windows):
                upcoming = reader.submit(fetch_audio, store, windows[position + 1], threads, result)
            encode(encoder, decoded, result)
    last = refs[-1]
    if not write_batch(engine, run, expected_cursor, (last.created_at, last.id), result):
        # An earlier attempt of this batch committed: its figures are already on the run.
        result.failures.clear()
        result.vectors.clear()
    return result


def estimate(
    engine: Engine,
    store: ObjectStore,
    encoder: Encoder,
    scope: Scope,
    sample: int,
    threads: int,
) -> dict[str, Any]:
    """What a run would do, writing nothing: how many assets, and the time, measured by reading
    and encoding a sample of them (the write is estimated from nothing: it is the cheap part)."""
    pending, run, upper = count_pending(engine, scope)
    out: dict[str, Any] = {
        "encoder_version": scope.encoder_version,
        "assets": pending,
        "resumes_run": str(run.id) if run else None,
        "sampled": 0,
        "seconds_per_asset": None,
        "estimated_seconds": 0.0,
    }
    if pending == 0 or sample <= 0:
        return out
    probe = run or Run(uuid.UUID(int=0), scope.encoder_version, upper, None, 0, 0, 0, 0, False)
    refs = next_page(engine, scope, probe, run.cursor if run else None, sample)
    result = BatchResult()
    decoded = fetch_audio(store, refs, threads, result)
    encode(encoder, decoded, result)
    per_asset = (result.fetch_s + result.encode_s) / max(1, len(refs))
    out.update(
        sampled=len(refs),
        sample_failures=result.failures,
        seconds_per_asset=round(per_asset, 6),
        estimated_seconds=round(per_asset * pending, 3),
    )
    return out


# One batch: (run, the batch's assets, the cursor it starts from) -> what it did.
BatchFn = Callable[[Run, Sequence[AssetRef], Cursor | None], BatchResult]


def run_backfill(
    engine: Engine,
    scope: Scope,
    process: BatchFn,
    batch_size: int,
    limit: int | None = None,
    on_progress: Callable[[Run, Progress], None] | None = None,
) -> tuple[Run, Progress, str]:
    """Open (or resume) the scope's run and process batches until done or `limit` assets.

    `process(run, refs, expected_cursor)` does one batch (a Prefect task in the flow, a plain
    call elsewhere). Returns the run, this invocation's progress and the run's final status:
    `completed`, or `stopped` when the limit ended it (the next invocation resumes).
    """
    with exclusive(engine, scope):
        run = open_run(engine, scope)
        walk = Walk(
            next_page=lambda run, cursor, size: next_page(engine, scope, run, cursor, size),
            process=process,
        )
        progress, status = drive(engine, RUNS, run, walk, batch_size, limit, on_progress)
    return run, progress, status
