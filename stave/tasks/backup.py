"""Logical backups: pg_dump streamed to the object store, restore drills, retention.

A backup is `pg_dump -Fc` of the whole database, streamed from the child's stdout into the
object store (multipart on S3; temporary file then rename on the filesystem store), so no full
copy sits in memory. Row counts for the manifest are taken inside the same snapshot pg_dump
dumps (`pg_export_snapshot` + `--snapshot`), so the drill can compare them exactly.

A `backup_record` is `running` while the dump streams and becomes `succeeded` only after the
object and its manifest are written; any failure removes the object and marks the record
`failed` with the cause. A drill verifies the object's sha256 against the record *before*
pg_restore reads a byte, restores into a scratch database, compares row counts and drops it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from stave.infra.db import libpq_target
from stave.infra.embedded_pg import bin_dir
from stave.infra.errors import InvalidInput, NotFound, StaveError, first_line
from stave.infra.objectstore.base import ObjectInfo, ObjectStore
from stave.infra.objectstore.keys import backup_key
from stave.models.base import new_id, utcnow

CONTENT_TYPE = "application/vnd.postgresql.custom-dump"
log = logging.getLogger("stave.backup")


class BackupFailed(StaveError):
    """pg_dump, pg_restore or a drill's check failed; the message says which and why."""

    error_class = "internal"


@dataclass
class BackupResult:
    id: uuid.UUID
    object_key: str
    bytes: int
    sha256: str
    manifest: dict[str, Any]
    seconds: float


def _tool(name: str) -> str:
    return str(bin_dir() / name)


def _tables(conn: Any) -> list[str]:
    rows = conn.execute(
        text(
            # Not pg_stat_user_tables: it lists other sessions' temporary tables too (a
            # backfill's staging table, say), which pg_dump rightly leaves out.
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        )
    ).scalars()
    return list(rows)


def _count_rows(conn: Any, tables: Iterable[str]) -> dict[str, int]:
    return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in tables}


def run_backup(
    engine: Engine,
    store: ObjectStore,
    *,
    url: str,
    env_name: str,
    progress: Callable[[int], None] | None = None,
) -> BackupResult:
    """Dump the database at `url` into the store; the record says how it went.

    `progress`, if given, is called with the number of bytes each time a chunk is streamed.
    """
    with recorded(engine, store, kind="dump", env_name=env_name) as (backup_id, key, started):
        result = _dump(
            store, url=url, key=key, backup_id=backup_id, started=started, progress=progress
        )
        succeed(
            engine, backup_id, result.manifest, server_version=result.manifest["server_version"]
        )
    return result


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


def _dump(
    store: ObjectStore,
    *,
    url: str,
    key: str,
    backup_id: uuid.UUID,
    started: datetime,
    progress: Callable[[int], None] | None,
) -> BackupResult:
    target, env = libpq_target(url)
    snapshot_engine = create_engine(url, poolclass=NullPool)
    try:
        with (
            snapshot_engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            # Row counts and the dump see the same snapshot; holding this transaction open
            # keeps the snapshot importable until pg_dump has taken it.
            conn.execute(text("SET TRANSACTION READ ONLY"))
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            version = conn.execute(text("SHOW server_version")).scalar_one()
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            _check_major(str(version))
            info, _ = stream_to_store(
                # --enable-row-security: run as a role subject to the per-user policies
                # (0006), pg_dump would otherwise refuse; with no user context they pass
                # every row, so the dump is whole either way.
                [
                    _tool("pg_dump"),
                    "-Fc",
                    "--enable-row-security",
                    f"--snapshot={snapshot}",
                    f"--dbname={target}",
                ],
                env,
                store,
                key,
                content_type=CONTENT_TYPE,
                progress=progress,
            )
            tables = _count_rows(conn, _tables(conn))
    finally:
        snapshot_engine.dispose()
    finished = utcnow()
    manifest = {
        "id": str(backup_id),
        "kind": "dump",
        "format": "pg_dump custom",
        "database": database,
        "server_version": str(version),
        "pg_dump": _tool_version("pg_dump"),
        "object_key": key,
        "bytes": info.size,
        "sha256": info.sha256,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "tables": tables,
    }
    store.put_bytes(
        manifest_key(key), json.dumps(manifest, indent=2).encode(), content_type="application/json"
    )
    assert info.sha256 is not None
    return BackupResult(
        backup_id, key, info.size, info.sha256, manifest, (finished - started).total_seconds()
    )


def stream_to_store(
    argv: list[str],
    env: dict[str, str],
    store: ObjectStore,
    key: str,
    *,
    content_type: str,
    progress: Callable[[int], None] | None = None,
) -> tuple[ObjectInfo, str]:
    """Run a tool whose stdout is the backup, streaming it into the store; returns what was
    written and the tool's stderr. A failing tool or store raises, and the child is killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    errors = _drain(proc.stderr)
    try:
        source: Any = proc.stdout if progress is None else _Counted(proc.stdout, progress)
        info = store.put_stream(key, source, content_type=content_type)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    errors.join()
    name = argv[0].rsplit("/", 1)[-1]
    if code != 0:
        raise BackupFailed(f"{name} exited with {code}: {errors.first_line()}")
    return info, errors.data.decode(errors="replace")


class _Counted:
    """A read-through wrapper that reports how many bytes went by (for a progress bar)."""

    def __init__(self, stream: Any, report: Callable[[int], None]) -> None:
        self.stream, self.report = stream, report

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.stream.read(size)
        if data:
            self.report(len(data))
        return data


class _drain(threading.Thread):
    """Read a child's stderr in the background so it can never block on a full pipe."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        super().__init__(daemon=True)
        self.stream, self.data = stream, b""
        self.start()

    def run(self) -> None:
        if self.stream is not None:
            self.data = self.stream.read()

    def first_line(self) -> str:
        lines = [line for line in self.data.decode(errors="replace").splitlines() if line.strip()]
        return lines[0] if lines else "(no message)"


def _tool_version(name: str) -> str:
    out = subprocess.run([_tool(name), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _check_major(server_version: str) -> None:
    tools = _tool_version("pg_dump").split()[-1]
    if int(server_version.split(".")[0]) > int(tools.split(".")[0]):
        raise BackupFailed(
            f"server is PostgreSQL {server_version} but pg_dump is {tools}: a dump needs client "
            "tools of the server's major version or newer"
        )


# -- records --------------------------------------------------------------------------------
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
        try:
            ident = uuid.UUID(backup_id)
        except ValueError:
            raise NotFound(f"backup {backup_id[:40]!r} is not an id (a UUID)") from None
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


# -- restore --------------------------------------------------------------------------------
def restore(
    store: ObjectStore, record: dict[str, Any], *, url: str, database: str, force: bool
) -> dict[str, int]:
    """Restore a verified backup into `database` (created if missing) on the server at `url`.

    Refuses a database that has tables unless `force`. The object's sha256 is checked against
    the record before pg_restore reads anything: a corrupted backup is never restored.
    """
    store.verify(record["object_key"], expected_sha256=record["sha256"])
    _ensure_empty_database(url, database, force=force)
    target, env = libpq_target(str(make_url(url).set(database=database)))
    args = [_tool("pg_restore"), "--exit-on-error", f"--dbname={target}"]
    if force:
        args[1:1] = ["--clean", "--if-exists"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    errors = _drain(proc.stderr)
    assert proc.stdin is not None
    try:
        for chunk in store.iter_chunks(record["object_key"], expected_sha256=record["sha256"]):
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    code = proc.wait()
    errors.join()
    if code != 0:
        raise BackupFailed(f"pg_restore into {database} exited with {code}: {errors.first_line()}")
    counter = create_engine(str(make_url(url).set(database=database)), poolclass=NullPool)
    try:
        with counter.connect() as conn:
            return _count_rows(conn, _tables(conn))
    finally:
        counter.dispose()


def _maintenance(url: str) -> Engine:
    return create_engine(
        str(make_url(url).set(database="postgres")),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
    )


def _ensure_empty_database(url: str, database: str, *, force: bool) -> None:
    if not database.replace("_", "").isalnum() or not database[0].isalpha():
        raise InvalidInput(f"database name {database!r}: use letters, digits and underscores")
    admin = _maintenance(url)
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
            ).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{database}"'))
                return
    finally:
        admin.dispose()
    probe = create_engine(str(make_url(url).set(database=database)), poolclass=NullPool)
    try:
        with probe.connect() as conn:
            tables = len(_tables(conn))
    finally:
        probe.dispose()
    if tables and not force:
        raise InvalidInput(
            f"database {database} is not empty ({tables} tables); restore into a new name, "
            "or pass --force to replace its contents"
        )


def drop_database(url: str, database: str) -> None:
    admin = _maintenance(url)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def drill(
    engine: Engine, store: ObjectStore, record: dict[str, Any], *, url: str
) -> dict[str, Any]:
    """Prove a backup restores: verify, restore into a scratch database, compare, drop."""
    scratch = f"stave_drill_{uuid.uuid4().hex[:10]}"
    started = utcnow()
    try:
        counts = restore(store, record, url=url, database=scratch, force=False)
    finally:
        drop_database(url, scratch)
    expected = record["manifest"].get("tables", {})
    wrong = {t: (n, counts.get(t)) for t, n in expected.items() if counts.get(t) != n}
    if wrong:
        table, (want, got) = next(iter(wrong.items()))
        raise BackupFailed(
            f"restore drill of backup {record['id']}: {table} has {got} rows, the manifest "
            f"says {want} ({len(wrong)} table(s) differ)"
        )
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE backup_record SET verified_at = now() WHERE id = :id"),
            {"id": record["id"]},
        )
    return {
        "backup_id": str(record["id"]),
        "tables": len(counts),
        "rows": sum(counts.values()),
        "seconds": round((utcnow() - started).total_seconds(), 2),
    }


# -- retention ------------------------------------------------------------------------------
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
