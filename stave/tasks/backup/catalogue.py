"""The store is the catalogue: every backup is found from its manifest in the object store.

A backup exists when its object and its manifest (`<key>.manifest.json`) are in the store;
nothing else is needed to list, verify, restore or recover, so all of that works with the
database server gone. `backup_record` is a cache of the same facts (plus the runs that failed
or are still running, which have no manifest): `sync_records` rebuilds it from the store,
adding what is missing and dropping succeeded rows whose manifest is gone. A drill writes
`verified_at` into the manifest as well as the record, so "the newest verified backup" is a
fact of the store too.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra import wal
from stave.infra.errors import InvalidInput, NotFound, ObjectCorrupted
from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.keys import backups_prefix
from stave.models.base import parse_id, utcnow

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class StoredBackup:
    """One backup as its manifest in the store describes it."""

    id: uuid.UUID
    kind: str  # "dump" | "base"
    object_key: str
    bytes: int
    sha256: str
    started_at: datetime
    finished_at: datetime
    verified_at: datetime | None
    manifest: dict[str, Any] = field(repr=False)

    def as_record(self) -> dict[str, Any]:
        """The shape restore and drill take (the same as a `backup_record` row)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": "succeeded",
            "object_key": self.object_key,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "manifest": self.manifest,
            "created_at": self.started_at,
            "finished_at": self.finished_at,
            "verified_at": self.verified_at,
        }


@dataclass
class WalSummary:
    """One cluster's archived WAL in the store."""

    system: str
    files: int = 0
    bytes: int = 0
    first: str | None = None
    last: str | None = None
    newest_at: datetime | None = None


def stored_backups(
    store: ObjectStore, env_name: str, kind: str | None = None
) -> list[StoredBackup]:
    """Every backup of the environment in the store, newest first."""
    found, corrupted = _scan(store, env_name)
    _warn(corrupted)
    return [b for b in found if kind is None or b.kind == kind]


def _warn(corrupted: list[ObjectCorrupted]) -> None:
    # One bad manifest must not hide every other backup; `stave backup verify` names it.
    for err in corrupted:
        log.warning("%s", err)


def _scan(store: ObjectStore, env_name: str) -> tuple[list[StoredBackup], list[ObjectCorrupted]]:
    """The readable backups, newest first, and what is wrong with each unreadable manifest."""
    found, corrupted = [], []
    for info in store.list(backups_prefix(env_name)):
        if not info.key.endswith(MANIFEST_SUFFIX):
            continue
        try:
            found.append(_read_manifest(store, info.key))
        except ObjectCorrupted as err:
            corrupted.append(err)
    return sorted(found, key=lambda b: b.started_at, reverse=True), corrupted


def find_backup(
    store: ObjectStore, env_name: str, backup_id: str | None, *, kind: str
) -> StoredBackup:
    """A backup by id, or the newest of `kind`, from the store alone. A backup that is
    missing only because its manifest is corrupted is named as corrupted, not as absent."""
    backups, corrupted = _scan(store, env_name)
    if backup_id is None:
        newest = next((b for b in backups if b.kind == kind), None)
        if newest is None:
            if corrupted:
                raise ObjectCorrupted(
                    f"no readable {kind} backup of environment {env_name!r} in "
                    f"{store.describe()}: {len(corrupted)} manifest(s) corrupted, e.g. "
                    f"{corrupted[0]}"
                )
            raise NotFound(f"no {kind} backup of environment {env_name!r} in {store.describe()}")
        _warn(corrupted)
        return newest
    ident = parse_id(backup_id, "backup")
    match = next((b for b in backups if b.id == ident), None)
    if match is None:
        named = next((err for err in corrupted if str(ident) in str(err)), None)
        if named is not None:
            raise ObjectCorrupted(f"backup {ident} cannot be used: {named}")
        raise NotFound(f"no backup {ident} of environment {env_name!r} in {store.describe()}")
    _warn(corrupted)
    if match.kind != kind:
        use = "stave backup pitr" if match.kind == "base" else "stave backup restore"
        raise InvalidInput(f"backup {ident} is a {match.kind} backup: use it with {use}")
    return match


def wal_summary(store: ObjectStore, env_name: str) -> list[WalSummary]:
    """The archived WAL of each cluster (system identifier) of the environment."""
    by_system: dict[str, WalSummary] = {}
    segments: dict[str, list[str]] = {}
    for info in store.list(wal.wal_prefix(env_name)):
        held = wal.split_key(info.key, env_name)
        if held is None:
            continue
        system, name = held
        summary = by_system.setdefault(system, WalSummary(system))
        summary.files += 1
        summary.bytes += info.size
        if wal.SEGMENT.match(name):
            segments.setdefault(system, []).append(name)
        if info.last_modified and (
            summary.newest_at is None or info.last_modified > summary.newest_at
        ):
            summary.newest_at = info.last_modified
    for system, names in segments.items():
        names.sort(key=lambda n: wal.segment_number(n)[::-1])
        by_system[system].first, by_system[system].last = names[0], names[-1]
    return sorted(by_system.values(), key=lambda w: w.newest_at or utcnow(), reverse=True)


def mark_verified(store: ObjectStore, backup: dict[str, Any]) -> datetime:
    """Record in the backup's manifest that a drill restored it (now)."""
    key = backup["object_key"] + MANIFEST_SUFFIX
    manifest = json.loads(store.get_bytes(key))
    when = utcnow()
    manifest["verified_at"] = when.isoformat()
    store.put_bytes(key, json.dumps(manifest, indent=2).encode(), content_type="application/json")
    return when


def sync_records(engine: Engine, store: ObjectStore, env_name: str) -> dict[str, int]:
    """Make `backup_record` agree with the store: add the backups only the store knows, refresh
    `verified_at`, and drop succeeded rows whose manifest is no longer there."""
    stored = {b.id: b for b in stored_backups(store, env_name)}
    added = removed = 0
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT id, status FROM backup_record WHERE env = :env"), {"env": env_name}
        ).all()
        known = {r.id: r.status for r in rows}
        for backup in stored.values():
            params = {
                "id": backup.id,
                "env": env_name,
                "kind": backup.kind,
                "key": backup.object_key,
                "bytes": backup.bytes,
                "sha": backup.sha256,
                "version": backup.manifest.get("server_version"),
                "manifest": json.dumps(backup.manifest),
                "created": backup.started_at,
                "finished": backup.finished_at,
                "verified": backup.verified_at,
            }
            if backup.id not in known:
                conn.execute(
                    text(
                        "INSERT INTO backup_record (id, env, kind, status, object_key, bytes, "
                        "sha256, server_version, manifest, created_at, finished_at, verified_at) "
                        "VALUES (:id, :env, :kind, 'succeeded', :key, :bytes, :sha, :version, "
                        "CAST(:manifest AS jsonb), :created, :finished, :verified)"
                    ),
                    params,
                )
                added += 1
            elif backup.verified_at is not None:
                conn.execute(
                    text(
                        "UPDATE backup_record SET verified_at = :verified WHERE id = :id "
                        "AND (verified_at IS NULL OR verified_at < :verified)"
                    ),
                    params,
                )
        gone = [i for i, status in known.items() if status == "succeeded" and i not in stored]
        if gone:
            conn.execute(text("DELETE FROM backup_record WHERE id = ANY(:ids)"), {"ids": gone})
            removed = len(gone)
    return {"added": added, "removed": removed}


def _read_manifest(store: ObjectStore, key: str) -> StoredBackup:
    try:
        manifest = json.loads(store.get_bytes(key))
        verified = manifest.get("verified_at")
        return StoredBackup(
            id=uuid.UUID(manifest["id"]),
            kind=manifest["kind"],
            object_key=key.removesuffix(MANIFEST_SUFFIX),
            bytes=int(manifest["bytes"]),
            sha256=manifest["sha256"],
            started_at=datetime.fromisoformat(manifest["started_at"]),
            finished_at=datetime.fromisoformat(manifest["finished_at"]),
            verified_at=datetime.fromisoformat(verified) if verified else None,
            manifest=manifest,
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ObjectCorrupted(f"backup manifest {key} is unreadable: {err}") from None
