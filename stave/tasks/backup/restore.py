"""Restoring a backup into a database on the same server, and the drill that proves a backup
restores (sha256 first, then pg_restore into a scratch database, row counts, drop)."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from stave.infra.db import libpq_target, one_connection
from stave.infra.errors import ConfigError, InvalidInput, first_line
from stave.infra.objectstore.base import ObjectStore
from stave.infra.roles import ensure_cluster_roles, grant_schema_to_migrator
from stave.models.base import utcnow
from stave.tasks.backup.catalogue import mark_verified
from stave.tasks.backup.tools import BackupFailed, Drain, count_rows, tool, user_tables


def restore(
    store: ObjectStore, record: dict[str, Any], *, url: str, database: str, force: bool
) -> dict[str, int]:
    """Restore a verified backup into `database` (created if missing) on the server at `url`.

    Refuses a database that has tables unless `force`. The object's sha256 is checked against
    the record before pg_restore reads anything: a corrupted backup is never restored.
    """
    store.verify(record["object_key"], expected_sha256=record["sha256"])
    _ensure_empty_database(url, database, force=force)
    admin = _maintenance(url)
    try:
        with admin.connect() as conn:
            ensure_cluster_roles(conn)  # a new server has none of them
    finally:
        admin.dispose()
    with one_connection(str(make_url(url).set(database=database))) as conn:
        try:
            grant_schema_to_migrator(conn)
        except ProgrammingError as err:
            login = make_url(url).username
            raise ConfigError(
                f"the login {login} may not let stave_migrator own tables in database "
                f"{database} ({first_line(err.orig or err)}): a DBA runs GRANT USAGE, CREATE ON "
                f"SCHEMA public TO stave_migrator; in it, or restore as the database's owner"
            ) from None
    target, env = libpq_target(str(make_url(url).set(database=database)))
    # No comments: Stave's schema has none, and the one a dump holds is the vector extension's
    # own (CREATE EXTENSION sets it again), which only the extension's owner may set: a
    # non-superuser owner login's restore (the nightly drill) would stop on it.
    args = [tool("pg_restore"), "--exit-on-error", "--no-comments", f"--dbname={target}"]
    if force:
        args[1:1] = ["--clean", "--if-exists"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    errors = Drain(proc.stderr)
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
    with one_connection(str(make_url(url).set(database=database))) as conn:
        return count_rows(conn, user_tables(conn))


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
    with one_connection(str(make_url(url).set(database=database))) as conn:
        tables = len(user_tables(conn))
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
    engine: Engine | None, store: ObjectStore, record: dict[str, Any], *, url: str
) -> dict[str, Any]:
    """Prove a backup restores: verify, restore into a scratch database, compare, drop; the
    manifest in the store (and the record, given the engine) then says when."""
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
    verified = mark_verified(store, record)
    if engine is not None:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE backup_record SET verified_at = :at WHERE id = :id"),
                {"id": record["id"], "at": verified},
            )
    return {
        "backup_id": str(record["id"]),
        "tables": len(counts),
        "rows": sum(counts.values()),
        "seconds": round((utcnow() - started).total_seconds(), 2),
    }
