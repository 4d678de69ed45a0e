"""Backup records: `running` while the work goes on, `succeeded` only when the objects and
the manifest are written, `failed` with the cause (and the objects removed) otherwise."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, NotFound, first_line
from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.keys import backup_key
from stave.models.base import new_id, parse_id, utcnow

log = logging.getLogger(__name__)


@contextmanager
def recorded(
    engine: Engine, store: ObjectStore, *, kind: str, env_name: str
) -> Iterator[tuple[uuid.UUID, str, datetime]]:
    """A `running` backup record for the work inside; marked `failed` (with the cause, and
    its objects removed) if that work raises. The work calls `succeed` when it is done."""
    backup_id = new_id()
    started = utcnow()
    key = backup_key(env_name, kind, backup_id, started)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO backup_record (id, env, kind, status, object_key, created_at) "
                "VALUES (:id, :env, :kind, 'running', :key, :at)"
            ),
            {"id": backup_id, "env": env_name, "kind": kind, "key": key, "at": started},
        )
    try:
        yield backup_id, key, started
    except BaseException as err:
        # The record first: whatever happens to the cleanup, nothing claims success.
        message = first_line(err)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE backup_record SET status = 'failed', error = :error, "
                    "finished_at = now() WHERE id = :id"
                ),
                {"id": backup_id, "error": message[:2000]},
            )
        # A partial multipart upload is never an object; a finished one is removed here, or by
        # the next run's `mark_interrupted` sweep if the store is still down.
        for leftover in (key, manifest_key(key)):
            try:
                store.delete(leftover)
            except Exception:
                log.warning("could not remove %s after a failed backup", leftover)
        raise


def succeed(
    engine: Engine, backup_id: uuid.UUID, manifest: dict[str, Any], *, server_version: str | None
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE backup_record SET status = 'succeeded', bytes = :bytes, sha256 = :sha, "
                "server_version = :version, manifest = CAST(:manifest AS jsonb), "
                "finished_at = :finished WHERE id = :id"
            ),
            {
                "id": backup_id,
                "bytes": manifest["bytes"],
                "sha": manifest["sha256"],
                "version": server_version,
                "manifest": json.dumps(manifest),
                "finished": manifest["finished_at"],
            },
        )


def manifest_key(key: str) -> str:
    return key + ".manifest.json"


def list_backups(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, env, kind, status, object_key, bytes, sha256, server_version, "
                "created_at, finished_at, verified_at, error FROM backup_record "
                "ORDER BY created_at DESC LIMIT :limit"
            ),
            {"limit": limit},
        ).mappings()
        return [dict(r) for r in rows]


def get_backup(engine: Engine, backup_id: str | None) -> dict[str, Any]:
    """A succeeded backup by id, or the newest succeeded one."""
    with engine.connect() as conn:
        if backup_id is None:
            row = (
                conn.execute(
                    text(
                        "SELECT * FROM backup_record WHERE status = 'succeeded' AND kind = 'dump' "
                        "ORDER BY created_at DESC LIMIT 1"
                    )
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise NotFound("no succeeded backup yet: stave backup run")
            return dict(row)
        ident = parse_id(backup_id, "backup")
        row = (
            conn.execute(text("SELECT * FROM backup_record WHERE id = :id"), {"id": ident})
            .mappings()
            .one_or_none()
        )
    if row is None:
        raise NotFound(f"no backup {ident}")
    if row["status"] != "succeeded":
        raise InvalidInput(f"backup {ident} is {row['status']}, not a usable backup")
    if row["kind"] != "dump":
        raise InvalidInput(
            f"backup {ident} is a base backup: use it with stave backup pitr, not restore/verify"
        )
    return dict(row)


def mark_interrupted(engine: Engine, store: ObjectStore, older_than: timedelta) -> int:
    """Backups left `running` by a killed process: failed, with their partial objects removed."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "UPDATE backup_record SET status = 'failed', finished_at = now(), "
                "error = 'interrupted: the backup process stopped before finishing' "
                "WHERE status = 'running' AND created_at < now() - make_interval(secs => :s) "
                "RETURNING object_key"
            ),
            {"s": older_than.total_seconds()},
        ).scalars()
        keys = list(rows)
    for key in keys:
        store.delete(key)
        store.delete(manifest_key(key))
    return len(keys)
