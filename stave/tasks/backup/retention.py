"""Which backups to keep (daily, weekly, monthly), and removing the rest, from the store.

Dumps keep the newest of each of the last N days, weeks and months; base backups the newest of
each of the last N days and weeks; the newest verified backup of each kind is always kept.
WAL older than the oldest kept base backup's start segment can serve no recovery and is
deleted with it. Decisions are taken from the store's catalogue (catalogue.py); the
`backup_record` cache is brought in line afterwards.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from stave.infra import wal
from stave.infra.objectstore.base import ObjectStore
from stave.models.base import utcnow
from stave.tasks.backup.catalogue import (
    MANIFEST_SUFFIX,
    StoredBackup,
    stored_backups,
    sync_records,
)

ORPHAN_WAL_AGE = timedelta(days=1)


def plan_retention(
    backups: list[tuple[uuid.UUID, datetime, datetime | None]],
    *,
    daily: int,
    weekly: int,
    monthly: int,
) -> set[uuid.UUID]:
    """Which succeeded backups to keep: the newest of each of the last `daily` days, `weekly`
    ISO weeks and `monthly` months, and always the newest verified one."""
    newest_first = sorted(backups, key=lambda b: b[1], reverse=True)
    keep: set[uuid.UUID] = set()
    for count, bucket in (
        (daily, lambda d: d.date()),
        (weekly, lambda d: tuple(d.isocalendar())[:2]),
        (monthly, lambda d: (d.year, d.month)),
    ):
        seen: list[Any] = []
        for backup_id, created, _ in newest_first:
            key = bucket(created.astimezone(UTC))
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(key)
            keep.add(backup_id)
    verified = [b for b in newest_first if b[2] is not None]
    if verified:
        keep.add(verified[0][0])
    return keep


def apply_retention(
    engine: Engine | None,
    store: ObjectStore,
    *,
    env_name: str,
    daily: int,
    weekly: int,
    monthly: int,
) -> list[str]:
    """Delete the dumps outside the plan; returns their ids."""
    removed = _remove_outside(
        store, stored_backups(store, env_name, "dump"), daily=daily, weekly=weekly, monthly=monthly
    )
    if engine is not None:
        sync_records(engine, store, env_name)
    return [str(b.id) for b in removed]


def apply_base_retention(
    engine: Engine | None, store: ObjectStore, *, env_name: str, daily: int, weekly: int
) -> dict[str, Any]:
    """Delete base backups outside the plan, then the WAL no kept base backup needs."""
    bases = stored_backups(store, env_name, "base")
    removed = _remove_outside(store, bases, daily=daily, weekly=weekly, monthly=0)
    kept = [b for b in bases if b not in removed and b.manifest.get("system_identifier")]
    wal_deleted = prune_wal(store, env_name, kept) if kept else 0
    if engine is not None:
        sync_records(engine, store, env_name)
    return {"deleted": [str(b.id) for b in removed], "wal_deleted": wal_deleted}


def prune_wal(store: ObjectStore, env_name: str, kept: list[StoredBackup]) -> int:
    """Delete WAL no kept base backup needs: per cluster, segments (and backup history files)
    before its oldest kept base backup's start; a cluster with no kept base backup, only once
    its WAL is a day old (its first base backup may be being taken). Timeline history files
    stay: they are tiny and every recovery reads them."""
    oldest: dict[str, int] = {}
    for b in kept:
        number = wal.segment_number(b.manifest["start_wal"], b.manifest["wal_segment_size"])[1]
        system = str(b.manifest["system_identifier"])
        oldest[system] = min(number, oldest.get(system, number))
    size = kept[0].manifest["wal_segment_size"]
    stale_before = utcnow() - ORPHAN_WAL_AGE
    doomed = []
    for info in store.list(wal.wal_prefix(env_name)):
        held = wal.split_key(info.key, env_name)
        if held is None or held[1].endswith(".history"):
            continue
        system, name = held
        if system in oldest:
            if wal.segment_number(name, size)[1] < oldest[system]:
                doomed.append(info.key)
        elif info.last_modified is not None and info.last_modified < stale_before:
            doomed.append(info.key)
    store.delete_many(doomed)
    return len(doomed)


def _remove_outside(
    store: ObjectStore, backups: list[StoredBackup], *, daily: int, weekly: int, monthly: int
) -> list[StoredBackup]:
    keep = plan_retention(
        [(b.id, b.started_at, b.verified_at) for b in backups],
        daily=daily,
        weekly=weekly,
        monthly=monthly,
    )
    removed = []
    for backup in backups:
        if backup.id in keep:
            continue
        # The manifest first: a backup without one is no longer listed or chosen, even if
        # removing its (much larger) object is interrupted.
        store.delete(backup.object_key + MANIFEST_SUFFIX)
        store.delete(backup.object_key)
        removed.append(backup)
    return removed
