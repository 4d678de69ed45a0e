"""The WAL a base backup needs, from the store: planned, checked for gaps, fetched verified.

Recovery replays every segment from the base backup's start segment onwards; a missing or
corrupted one in the middle would make PostgreSQL stop replaying there and serve a database
that silently lacks everything after it. So the whole chain is fetched and checked (each
object's recorded sha256 and its compression's own checksum, and no gap in any timeline's run
of segments) before a server is started, and any problem is one line naming the object.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stave.infra import wal
from stave.infra.errors import ObjectCorrupted
from stave.infra.objectstore.base import ObjectStore

FETCH_THREADS = 4


@dataclass(frozen=True)
class WalPlan:
    keys: dict[str, str]  # WAL file name -> object key
    segments: int
    last: str | None


def plan(
    store: ObjectStore,
    env_name: str,
    system: str,
    start_segment: str,
    segment_size: int = wal.DEFAULT_SEGMENT_SIZE,
) -> WalPlan:
    """Every WAL file from `start_segment` on (later timelines included), and the timelines'
    history; raises ObjectCorrupted naming the first missing segment of a gap."""
    base_timeline, start = wal.segment_number(start_segment, segment_size)
    keys: dict[str, str] = {}
    runs: dict[int, list[int]] = {}
    prefix = wal.wal_prefix(env_name, system)
    for info in store.list(prefix):
        held = wal.split_key(info.key, env_name)
        if held is None or held[1].endswith(".backup"):
            continue
        name = held[1]
        if name.endswith(".history"):
            keys[name] = info.key
            continue
        timeline, number = wal.segment_number(name, segment_size)
        if timeline < base_timeline or number < start:
            continue
        keys[name] = info.key
        if not name.endswith(".partial"):
            runs.setdefault(timeline, []).append(number)
    first_run = sorted(runs.get(base_timeline, []))
    if not first_run or first_run[0] != start:
        raise ObjectCorrupted(
            f"WAL segment {start_segment} (the base backup's start) is missing from "
            f"{prefix} in {store.describe()}"
        )
    last = None
    for timeline, numbers in sorted(runs.items()):
        numbers.sort()
        for before, after in itertools.pairwise(numbers):
            if after != before + 1:
                missing = wal.segment_name(timeline, before + 1, segment_size)
                raise ObjectCorrupted(
                    f"WAL segment {missing} is missing from {prefix}: the "
                    f"archive has a gap after {wal.segment_name(timeline, before, segment_size)}, "
                    "so recovery would stop there"
                )
        last = wal.segment_name(timeline, numbers[-1], segment_size)
    return WalPlan(keys, sum(len(n) for n in runs.values()), last)


def fetch_all(store: ObjectStore, wal_plan: WalPlan, into: Path) -> int:
    """Download every planned file into `into`, each checked; returns the bytes written."""
    into.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, str]) -> int:
        name, key = item
        data = wal.fetch(store, key)
        (into / name).write_bytes(data)
        return len(data)

    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        return sum(pool.map(one, sorted(wal_plan.keys.items())))


def check_all(store: ObjectStore, wal_plan: WalPlan) -> int:
    """Read and check every planned file without keeping it; returns the bytes checked."""
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        return sum(pool.map(lambda key: len(wal.fetch(store, key)), sorted(wal_plan.keys.values())))
