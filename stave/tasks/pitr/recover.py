"""Recovering from a base backup and the archived WAL, from the object store alone."""

from __future__ import annotations

import dataclasses
import pwd
import shutil
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from stave.infra.db import embedded_server
from stave.infra.embedded_pg import EmbeddedPostgres, RunningServer, bin_dir
from stave.infra.errors import DatabaseUnavailable, InvalidInput, NotFound
from stave.infra.objectstore.base import ChunkReader, ObjectStore
from stave.infra.settings import Settings
from stave.tasks import walchain
from stave.tasks.backup import BackupFailed
from stave.tasks.backup.catalogue import (
    StoredBackup,
    find_backup,
    mark_verified,
    stored_backups,
)


@dataclass
class RecoveredServer:
    server: RunningServer
    cluster: EmbeddedPostgres
    base_backup_id: str
    wal_files: int
    last_segment: str | None
    # The last transaction replayed (None: none after the base backup), and why recovery
    # stopped short of the target, when it did.
    reached_at: datetime | None = None
    short_of_target: str | None = None

    def url(self, database: str) -> str:
        return self.server.url(database)


def recover(
    store: ObjectStore,
    *,
    env_name: str,
    target: datetime | None,
    into: Path,
    archive_to: Settings | None = None,
) -> RecoveredServer:
    """Restore into the empty (or new) directory `into` from the store alone, replay WAL to
    `target` (None: to the last archived segment), and start it on a free loopback port.

    `archive_to`: the recovered server is the new primary and archives to that store (else it
    archives nowhere, so a drill never writes into the environment's WAL)."""
    if target is not None and target.tzinfo is None:
        raise InvalidInput("--to needs a time zone, e.g. 2026-11-24T01:30:00+00:00")
    into = into.resolve()
    if into.exists() and any(into.iterdir()):
        raise InvalidInput(f"{into} is not empty; recover into a new directory")
    base = _choose_base(store, env_name, target)
    wal_plan = _plan(store, env_name, base)
    # Everything is checked before a server starts: the tar's sha256 before a file is unpacked,
    # every WAL file's sha256 and completeness before replay.
    store.verify(base.object_key, expected_sha256=base.sha256)
    wal_dir = into / "wal"
    walchain.fetch_all(store, wal_plan, wal_dir)
    # A target after the archive's end (the day the host died, "now"): PostgreSQL refuses to
    # stop short of it, so recover to the end and say so.
    short = _past_the_end(store, base, wal_plan, target)
    cluster = _restore(store, base, into, wal_dir, None if short else target, archive_to)
    try:
        server = cluster.ensure_running()
    except DatabaseUnavailable as err:
        if target is None or short or RECOVERY_SHORT not in str(err):
            raise
        # The target lies after the last commit the archive holds (its last segment was
        # archived after the target, with no commit past it): to the end, again.
        short = (
            f"no transaction archived after {target.isoformat()} (the archive ends at "
            f"segment {wal_plan.last})"
        )
        shutil.rmtree(into / "data")
        cluster = _restore(store, base, into, wal_dir, None, archive_to)
        server = cluster.ensure_running()
    reached = _wait_promoted(server)
    cluster.wake_checkpointer()  # promoted: archive_timeout applies from now, not in 5 min
    return RecoveredServer(
        server, cluster, str(base.id), len(wal_plan.keys), wal_plan.last, reached, short
    )


# PostgreSQL's FATAL when WAL ran out before a recovery target time was reached.
RECOVERY_SHORT = "recovery ended before configured recovery target was reached"


def _restore(
    store: ObjectStore,
    base: StoredBackup,
    into: Path,
    wal_dir: Path,
    target: datetime | None,
    archive_to: Settings | None,
) -> EmbeddedPostgres:
    """The base backup unpacked into `into/data`, set to replay `wal_dir` to `target` (None:
    to its end) and promote; the cluster, not started."""
    data_dir = into / "data"
    data_dir.mkdir(parents=True, mode=0o700)
    reader: Any = ChunkReader(store.iter_chunks(base.object_key, expected_sha256=base.sha256))
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        archive.extractall(data_dir, filter="data")
    (data_dir / "recovery.signal").touch()
    lines = [
        "\n# Point-in-time recovery, written by stave backup pitr",
        f'restore_command = \'cp "{wal_dir}/%f" "%p"\'',
        "recovery_target_timeline = 'latest'",
    ]
    if target is not None:
        lines += [
            f"recovery_target_time = '{target.isoformat(sep=' ')}'",
            "recovery_target_action = 'promote'",
        ]
    with (data_dir / "postgresql.auto.conf").open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    for stale in ("postmaster.pid", "postmaster.opts"):
        (data_dir / stale).unlink(missing_ok=True)
    cluster = EmbeddedPostgres(data_dir, log_file=into / "postgres.log", archive_to=archive_to)
    if cluster._run_as is not None:
        _chown_tree(into, cluster._run_as)
    return cluster


def _past_the_end(
    store: ObjectStore, base: StoredBackup, plan: walchain.WalPlan, target: datetime | None
) -> str | None:
    """Why `target` is past what the archive holds (its last segment, or the base backup when
    no WAL follows it, was stored before the target), or None."""
    if target is None:
        return None
    if plan.last is not None and plan.last in plan.keys:
        last = store.stat(plan.keys[plan.last]).last_modified
        ends = f"its last segment {plan.last} was archived at"
    else:
        last, ends = base.finished_at, f"no WAL follows base backup {base.id}, which ended at"
    if last is None or last > target:
        return None
    return f"the archive ends before {target.isoformat()}: {ends} {last.isoformat()}"


def verify_base(store: ObjectStore, env_name: str, backup_id: str | None) -> dict[str, Any]:
    """Check a base backup and the WAL it needs, object by object, without a server."""
    base = find_backup(store, env_name, backup_id, kind="base")
    store.verify(base.object_key, expected_sha256=base.sha256)
    wal_plan = _plan(store, env_name, base)
    checked = walchain.check_all(store, wal_plan)
    mark_verified(store, base.as_record())
    return {
        "backup_id": str(base.id),
        "kind": "base",
        "bytes": base.bytes,
        "wal_files": len(wal_plan.keys),
        "wal_bytes": checked,
        "last_segment": wal_plan.last,
    }


def _plan(store: ObjectStore, env_name: str, base: StoredBackup) -> walchain.WalPlan:
    manifest = base.manifest
    return walchain.plan(
        store,
        env_name,
        str(manifest["system_identifier"]),
        manifest["start_wal"],
        manifest["wal_segment_size"],
    )


def _choose_base(store: ObjectStore, env_name: str, target: datetime | None) -> StoredBackup:
    bases = [
        b for b in stored_backups(store, env_name, "base") if b.manifest.get("system_identifier")
    ]
    if not bases:
        raise NotFound(
            f"no base backup of environment {env_name!r} in {store.describe()}: take one with "
            "`stave backup base`"
        )
    usable = [b for b in bases if target is None or b.finished_at <= target]
    if not usable:
        assert target is not None
        oldest = bases[-1]
        raise InvalidInput(
            f"--to {target.isoformat()} is before the oldest point that can be recovered, "
            f"{oldest.finished_at.isoformat()} (the end of base backup {oldest.id}): give a "
            "later --to"
        )
    return usable[0]


def check_embedded_slot(settings: Settings) -> Path:
    """The embedded database's directory, refused unless it is missing or empty (recovery
    never overwrites a cluster: move a damaged one aside first)."""
    slot = settings.embedded_pg_dir.resolve()
    if slot.exists() and any(slot.iterdir()):
        raise InvalidInput(
            f"{slot} is not empty: stop the embedded database and move that directory aside "
            "before recovering into its place"
        )
    return slot


def adopt_as_embedded(recovered: RecoveredServer, settings: Settings) -> RecoveredServer:
    """Move a recovered (promoted) cluster into the embedded database's place and start it
    there as the environment's database, archiving again."""
    slot = check_embedded_slot(settings)
    workdir = recovered.cluster.pgdata.parent
    recovered.cluster.stop()
    if slot.exists():
        slot.rmdir()
    shutil.move(recovered.cluster.pgdata, slot)
    conf = slot / "postgresql.auto.conf"
    text_ = conf.read_text()
    conf.write_text(text_.split("\n# Point-in-time recovery, written by stave")[0].rstrip() + "\n")
    cluster = embedded_server(settings)
    server = cluster.ensure_running()
    shutil.rmtree(workdir, ignore_errors=True)
    return dataclasses.replace(recovered, server=server, cluster=cluster)


def _chown_tree(root: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    shutil.chown(root, entry.pw_uid, entry.pw_gid)
    for path in root.rglob("*"):
        shutil.chown(path, entry.pw_uid, entry.pw_gid)


def _wait_promoted(server: RunningServer, timeout_s: float = 120) -> datetime | None:
    """Until the recovered server is promoted; the time of the last transaction it replayed
    (which PostgreSQL keeps after recovery ends)."""
    engine = create_engine(server.url("postgres"), poolclass=NullPool)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    if not conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one():
                        reached: datetime | None = conn.execute(
                            text("SELECT pg_last_xact_replay_timestamp()")
                        ).scalar_one()
                        return reached
            except Exception:
                pass
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise BackupFailed(f"recovery did not finish within {timeout_s:.0f} s")


def stop_command(recovered: RecoveredServer) -> str:
    runner = f"runuser -u {recovered.cluster._run_as} -- " if recovered.cluster._run_as else ""
    return f"{runner}{bin_dir() / 'pg_ctl'} -D {recovered.cluster.pgdata} stop"
