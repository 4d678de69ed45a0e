"""Which backups to keep (daily, weekly, monthly), and removing the rest."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.objectstore.base import ObjectStore
from stave.tasks.backup.records import manifest_key


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
    engine: Engine, store: ObjectStore, *, env_name: str, daily: int, weekly: int, monthly: int
) -> list[str]:
    """Delete succeeded backups outside the plan (objects first, then records)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, created_at, verified_at, object_key FROM backup_record "
                "WHERE status = 'succeeded' AND kind = 'dump' AND env = :env"
            ),
            {"env": env_name},
        ).all()
    keep = plan_retention(
        [(r.id, r.created_at, r.verified_at) for r in rows],
        daily=daily,
        weekly=weekly,
        monthly=monthly,
    )
    removed = []
    for row in rows:
        if row.id in keep:
            continue
        store.delete(row.object_key)
        store.delete(manifest_key(row.object_key))
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM backup_record WHERE id = :id"), {"id": row.id})
        removed.append(str(row.id))
    return removed
