"""Finishing a batch beside the model's process: its clips encoded, measured, put, validated
and published by processes of their own (ARCHITECTURE.md, "Processes on a GPU host").

- `pack.py` (the model's process): the batch measured on its device and copied once into
  shared memory, with the message that describes it (`handoff.py`);
- `pool.py` (the model's process): the finishing processes, the batches in flight to them,
  back-pressure, and a finisher's death answered for;
- `worker.py`, `finish.py` (a finishing process): store, validate, publish; a job's pages.
"""

from stave.tasks.finishing.handoff import BatchResult, ClipSlot, Handoff, PagesRequest
from stave.tasks.finishing.pack import made_batches, pack
from stave.tasks.finishing.pool import (
    Finished,
    FinisherPool,
    FinishersUnavailable,
    close_finishers,
    finishers,
    wait_for_pages,
)

__all__ = [
    "BatchResult",
    "ClipSlot",
    "Finished",
    "FinisherPool",
    "FinishersUnavailable",
    "Handoff",
    "PagesRequest",
    "close_finishers",
    "finishers",
    "made_batches",
    "pack",
    "wait_for_pages",
]
