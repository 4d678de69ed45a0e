"""Taking a base backup: `pg_basebackup` streamed into the object store, with its manifest."""

from __future__ import annotations

import io
import json
import re
import tarfile
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.db import libpq_target, one_connection
from stave.infra.embedded_pg import bin_dir
from stave.infra.errors import ConfigError
from stave.infra.objectstore.base import ObjectStore
from stave.models.base import utcnow
from stave.tasks.archiver import archiver_status
from stave.tasks.backup import BackupFailed, manifest_key, recorded, stream_to_store, succeed


def take_base_backup(engine: Engine, store: ObjectStore, *, url: str, env_name: str) -> str:
    """Stream a base backup into the store; returns the backup record id."""
    segment_size, system = _require_archiving(url)
    target, env = libpq_target(url)
    with recorded(engine, store, kind="base", env_name=env_name) as (backup_id, key, started):
        info, _ = stream_to_store(
            [
                str(bin_dir() / "pg_basebackup"),
                f"--dbname={target}",
                "-D",
                "-",
                "-Ft",
                "-X",
                "none",
                "--checkpoint=fast",
                "-v",
            ],
            env,
            store,
            key,
            content_type="application/x-tar",
        )
        label = _backup_label(store, key)
        manifest: dict[str, Any] = {
            "id": str(backup_id),
            "kind": "base",
            "format": "pg_basebackup tar, WAL from the archive",
            "bytes": info.size,
            "sha256": info.sha256,
            "start_lsn": label["lsn"],
            "timeline": label["timeline"],
            "start_wal": label["segment"],
            "wal_segment_size": segment_size,
            "system_identifier": system,
            "started_at": started.isoformat(),
            "finished_at": utcnow().isoformat(),
        }
        store.put_bytes(
            manifest_key(key), json.dumps(manifest).encode(), content_type="application/json"
        )
        succeed(engine, backup_id, manifest, server_version=None)
    return str(backup_id)


def _backup_label(store: ObjectStore, key: str) -> dict[str, Any]:
    """Where the backup's WAL starts, from its `backup_label` (the tar's first member: the
    server sends it first), read from the stored object's first chunk."""
    chunks = store.iter_chunks(key)
    head = next(chunks, b"")
    chunks.close()  # type: ignore[attr-defined]  # a generator: stop reading the rest
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as archive:
            for member in archive:
                if member.name == "backup_label":
                    handle = archive.extractfile(member)
                    content = handle.read().decode() if handle else ""
                    break
            else:
                content = ""
    except tarfile.TarError:
        content = ""
    location = re.search(r"START WAL LOCATION: (\S+) \(file ([0-9A-F]{24})\)", content)
    timeline = re.search(r"START TIMELINE: (\d+)", content)
    if location is None or timeline is None:
        raise BackupFailed(f"the base backup {key} has no readable backup_label first")
    return {
        "lsn": location.group(1),
        "segment": location.group(2),
        "timeline": int(timeline.group(1)),
    }


def archiving_enabled(url: str) -> bool:
    with one_connection(url) as conn:
        return archiver_status(conn).on


def _require_archiving(url: str) -> tuple[int, str]:
    """The server's WAL segment size and system identifier, once it is known to archive WAL (a
    base backup without its WAL in the store could never be recovered)."""
    with one_connection(url) as conn:
        archiver = archiver_status(conn)
        size = conn.execute(
            text("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")
        ).scalar_one()
        system = conn.execute(
            text("SELECT system_identifier FROM pg_control_system()")
        ).scalar_one()
    if not archiver.on:
        raise ConfigError(
            "the database does not archive WAL (archive_mode is off): set it up with "
            "`stave backup wal-setup` before taking base backups"
        )
    if archiver.failing:
        # pg_basebackup would wait for its WAL to be archived for as long as that fails.
        raise BackupFailed(
            f"WAL archiving is failing (last failed: {archiver.last_failed_wal} at "
            f"{archiver.last_failed:%Y-%m-%d %H:%M:%S}): the server's log says why; "
            "fix it before a base backup"
        )
    return int(size), str(system)
