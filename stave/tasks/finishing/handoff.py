"""What crosses from the model's process to a finishing process, and what comes back.

A batch crosses as one shared-memory segment, its clips' 16-bit samples followed by their
embeddings, and one small message (`Handoff`: ids, keys, levels, provenance, where each clip
lies in the segment) sent through the finisher's pipe. The samples are never pickled: the
model's process copies them from the device into the segment once, the finisher encodes from
it in place. What comes back is a `BatchResult`: the clips published, quarantined or lost
to another worker's lease, or the batch's error in Stave's words, with the CPU each step took.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from stave.infra.settings import Settings

EMBEDDING_DIM = 512
_ALIGN = 64


@dataclass
class ClipSlot:
    """One clip of a handed-off batch: its task, the key its file goes under, where its
    samples lie in the segment, and what the device measured of them."""

    task_id: uuid.UUID
    asset_id: uuid.UUID
    object_key: str
    offset: int  # in samples from the segment's start
    length: int
    requested_duration_s: float
    nonfinite_samples: int
    loudness_lufs: float | None  # None: the finisher measures it from the samples
    peak_dbfs: float | None
    provenance: dict[str, Any]
    timings: dict[str, float]
    device: str


@dataclass
class Handoff:
    """One claimed batch, made, for a finisher to store, validate and publish."""

    batch_id: str
    worker: str  # the lease owner: publication is fenced on it
    job_id: uuid.UUID | None
    model_version_id: uuid.UUID
    encoder_version: str
    sample_rate: int
    segment: str  # the shared-memory segment's name
    embeddings_at: int  # byte offset of the (clips, 512) float32 embeddings
    clips: list[ClipSlot]
    # The model's process's settings: a long-lived finisher serves drains whose settings
    # differ (tests, a warm drain reconfigured), so each batch says where it goes.
    settings: Settings

    @property
    def task_ids(self) -> list[uuid.UUID]:
        return [clip.task_id for clip in self.clips]

    @property
    def object_keys(self) -> list[str]:
        return [clip.object_key for clip in self.clips]

    def samples(self, buffer: Any) -> np.ndarray:
        return np.ndarray((self.embeddings_at // 2,), dtype=np.int16, buffer=buffer)

    def embeddings(self, buffer: Any) -> np.ndarray:
        return np.ndarray(
            (len(self.clips), EMBEDDING_DIM),
            dtype=np.float32,
            buffer=buffer,
            offset=self.embeddings_at,
        )


@dataclass
class PagesRequest:
    """Build a job's listening page and the Data Docs, and put them in the store."""

    job_id: uuid.UUID | None  # None: the Data Docs only
    settings: Settings
    publish: bool  # False: build the Data Docs locally only (STAVE_PUBLISH_PAGES=false)


@dataclass
class BatchResult:
    batch_id: str
    published: list[uuid.UUID] = field(default_factory=list)
    quarantined: list[uuid.UUID] = field(default_factory=list)
    lost_lease: list[uuid.UUID] = field(default_factory=list)
    error: tuple[str, str] | None = None  # (error class, one-line message)
    died: bool = False  # the finisher died with the batch: its objects may be left
    cpu: dict[str, float] = field(default_factory=dict)  # the finisher's CPU s by step


def layout(rows: list[int], clips: int) -> tuple[int, int]:
    """(bytes for the samples, total bytes) of a segment holding `rows` samples of 16 bits
    and `clips` embeddings."""
    samples = -(-(2 * sum(rows)) // _ALIGN) * _ALIGN
    return samples, samples + clips * EMBEDDING_DIM * 4


def attach(name: str) -> SharedMemory:
    """A segment the model's process made, opened in a finisher. Python 3.11 registers an
    attached segment with the resource tracker as if this process owned it; it does not
    (the model's process unlinks it), so it is unregistered at once."""
    segment = SharedMemory(name=name)
    resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    return segment
