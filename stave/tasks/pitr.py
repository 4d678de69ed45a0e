"""Point-in-time recovery: base backups, WAL shipping, and recovery to a moment.

- `take_base_backup` streams `pg_basebackup -Ft -X none` (a tar of the data directory) to the
  object store; the WAL it needs is archived by the server (`archive_command` into the spool).
- `ship_wal` moves finished segments from the spool to `backups/<env>/wal/`, verifying each
  upload before the local copy is removed.
- `recover` restores the newest base backup finished before the target time into a new
  directory, fetches the archived WAL beside it, and starts a server that replays to the target
  and promotes; it returns that server, running on a free loopback port.
"""

from __future__ import annotations

import json
import pwd
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from stave.infra.db import embedded_server, libpq_target
from stave.infra.embedded_pg import EmbeddedPostgres, RunningServer, bin_dir
from stave.infra.errors import ConfigError, InvalidInput, NotFound
from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.keys import validate_key
from stave.infra.settings import Settings
from stave.models.base import utcnow
from stave.tasks.backup import BackupFailed, manifest_key, recorded, stream_to_store, succeed

_WAL_NAME = re.compile(r"^[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?$|^[0-9A-F]{8}\.history$")


def wal_key(env_name: str, name: str) -> str:
    if not _WAL_NAME.match(name):
        raise InvalidInput(f"{name!r} is not a WAL file name")
    return validate_key(f"backups/{env_name}/wal/{name.lower()}")


@dataclass
class RecoveredServer:
    server: RunningServer
    cluster: EmbeddedPostgres
    base_backup_id: str
    wal_files: int

    def url(self, database: str) -> str:
        return self.server.url(database)


def take_base_backup(engine: Engine, store: ObjectStore, *, url: str, env_name: str) -> str:
    """Stream a base backup into the store; returns the backup record id."""
    target, env = libpq_target(url)
    with recorded(engine, store, kind="base", env_name=env_name) as (backup_id, key, started):
        info, log_text = stream_to_store(
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
        start = re.search(r"write-ahead log start point: (\S+) on timeline (\d+)", log_text)
        manifest: dict[str, Any] = {
            "id": str(backup_id),
            "kind": "base",
            "format": "pg_basebackup tar, WAL from the archive",
            "bytes": info.size,
            "sha256": info.sha256,
            "start_lsn": start.group(1) if start else None,
            "timeline": int(start.group(2)) if start else None,
            "started_at": started.isoformat(),
            "finished_at": utcnow().isoformat(),
        }
        store.put_bytes(
            manifest_key(key), json.dumps(manifest).encode(), content_type="application/json"
        )
        succeed(engine, backup_id, manifest, server_version=None)
    return str(backup_id)


def ship_wal(store: ObjectStore, spool: Path, *, env_name: str) -> int:
    """Upload every archived WAL file in `spool`, verify it, then remove the local copy."""
    shipped = 0
    if not spool.is_dir():
        return 0
    for path in sorted(spool.iterdir()):
        if not _WAL_NAME.match(path.name):
            continue  # a file cp is still writing has the final name only once complete
        data = path.read_bytes()
        key = wal_key(env_name, path.name)
        info = store.put_bytes(key, data, content_type="application/octet-stream")
        store.verify(key, expected_sha256=info.sha256)
        path.unlink()
        shipped += 1
    return shipped


def switch_wal(url: str) -> None:
    """Close the current segment so everything written so far gets archived."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_switch_wal()"))
    finally:
        engine.dispose()


def recover(
    engine: Engine, store: ObjectStore, *, env_name: str, target: datetime, into: Path
) -> RecoveredServer:
    """Restore to `target` into the empty (or new) directory `into` and start it."""
    if target.tzinfo is None:
        raise InvalidInput("--to needs a time zone, e.g. 2026-11-24T01:30:00+00:00")
    into = into.resolve()
    if into.exists() and any(into.iterdir()):
        raise InvalidInput(f"{into} is not empty; recover into a new directory")
    with engine.connect() as conn:
        base = conn.execute(
            text(
                "SELECT id, object_key, sha256 FROM backup_record WHERE kind = 'base' "
                "AND status = 'succeeded' AND env = :env AND finished_at <= :t "
                "ORDER BY finished_at DESC LIMIT 1"
            ),
            {"env": env_name, "t": target},
        ).one_or_none()
    if base is None:
        raise NotFound(f"no base backup finished before {target.isoformat()}: stave backup base")
    data_dir = into / "data"
    wal_dir = into / "wal"
    data_dir.mkdir(parents=True, mode=0o700)
    wal_dir.mkdir()
    # The sha256 is checked before a single file is unpacked.
    store.verify(base.object_key, expected_sha256=base.sha256)
    reader: Any = _ChunkReader(store.iter_chunks(base.object_key, expected_sha256=base.sha256))
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        archive.extractall(data_dir, filter="data")
    fetched = 0
    prefix = f"backups/{env_name}/wal/"
    for info in store.list(prefix):
        name = info.key.removeprefix(prefix).upper()
        name = name.replace(".HISTORY", ".history").replace(".BACKUP", ".backup")
        (wal_dir / name).write_bytes(store.get_bytes(info.key))
        fetched += 1
    (data_dir / "recovery.signal").touch()
    stamp = target.isoformat(sep=" ")
    with (data_dir / "postgresql.auto.conf").open("a") as handle:
        handle.write(
            "\n# Point-in-time recovery, written by stave backup pitr\n"
            f'restore_command = \'cp "{wal_dir}/%f" "%p"\'\n'
            f"recovery_target_time = '{stamp}'\n"
            "recovery_target_action = 'promote'\n"
        )
    for stale in ("postmaster.pid", "postmaster.opts"):
        (data_dir / stale).unlink(missing_ok=True)
    cluster = EmbeddedPostgres(data_dir, log_file=into / "postgres.log")
    if cluster._run_as is not None:
        _chown_tree(into, cluster._run_as)
    server = cluster.ensure_running()
    _wait_promoted(server)
    return RecoveredServer(server, cluster, str(base.id), fetched)


class _ChunkReader:
    """A file-like view of an iterator of byte chunks, for tarfile's streaming mode."""

    def __init__(self, chunks: Any) -> None:
        self.chunks, self.buffer = iter(chunks), b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            try:
                self.buffer += next(self.chunks)
            except StopIteration:
                break
        if size < 0:
            size = len(self.buffer)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def _chown_tree(root: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    shutil.chown(root, entry.pw_uid, entry.pw_gid)
    for path in root.rglob("*"):
        shutil.chown(path, entry.pw_uid, entry.pw_gid)


def _wait_promoted(server: RunningServer, timeout_s: float = 120) -> None:
    engine = create_engine(server.url("postgres"), poolclass=NullPool)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    if not conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one():
                        return
            except Exception:
                pass
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise BackupFailed(f"recovery did not finish within {timeout_s:.0f} s")


def stop_command(recovered: RecoveredServer) -> str:
    runner = f"runuser -u {recovered.cluster._run_as} -- " if recovered.cluster._run_as else ""
    return f"{runner}{bin_dir() / 'pg_ctl'} -D {recovered.cluster.pgdata} stop"


def wal_spool(settings: Settings) -> Path:
    """Where archived WAL waits to be shipped: the configured folder or the embedded spool."""
    if settings.wal_spool_dir is not None:
        return settings.wal_spool_dir
    if settings.uses_embedded_db:
        return embedded_server(settings).wal_spool

    raise ConfigError(
        "STAVE_WAL_SPOOL_DIR is not set: point it at the folder your server's archive_command "
        "copies WAL segments into"
    )
