"""Latent backfills: embeddings for an encoder version over existing clips, resumably.

A run walks `audio_asset` in `(created_at, id)` order (keyset pagination on its index, pages.py)
and takes the assets that have no embedding for the version (scope.py says which assets
belong). Each batch's vectors go in with binary COPY, or through a staging table and one
`INSERT … ON CONFLICT DO UPDATE` when a row conflicts (write.py), and the run's cursor advances
in that same transaction: a run killed at any point resumes after its last committed batch,
with no duplicate (the upsert and the fenced cursor) and no gap (the cursor only passes what
was committed). The run record, its lock and the loop are tasks/resumable.py's (runs.py, run.py).
An asset whose audio is missing, corrupted or not audio is recorded on the run and passed
over; the rest go on. Coverage and progress: status.py. No Prefect here.
"""

from stave.tasks.backfill.pages import AssetRef, next_page
from stave.tasks.backfill.run import (
    BatchFn,
    encode,
    estimate,
    fetch_audio,
    process_batch,
    run_backfill,
    vector_problem,
)
from stave.tasks.backfill.runs import (
    RUNS,
    BackfillBusy,
    count_pending,
    exclusive,
    find_open_run,
    finish_run,
    open_run,
)
from stave.tasks.backfill.scope import Scope, resolve_scope
from stave.tasks.backfill.status import coverage, latest_progress
from stave.tasks.backfill.write import BatchResult, copy_chunks, write_batch
from stave.tasks.resumable import Progress, Run

__all__ = [
    "RUNS",
    "AssetRef",
    "BackfillBusy",
    "BatchFn",
    "BatchResult",
    "Progress",
    "Run",
    "Scope",
    "copy_chunks",
    "count_pending",
    "coverage",
    "encode",
    "estimate",
    "exclusive",
    "fetch_audio",
    "find_open_run",
    "finish_run",
    "latest_progress",
    "next_page",
    "open_run",
    "process_batch",
    "resolve_scope",
    "run_backfill",
    "vector_problem",
    "write_batch",
]
