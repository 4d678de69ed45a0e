"""Engines and sessions: one pooled engine per process, pgvector registered on every connection.

With `STAVE_DATABASE_URL` unset, the URL is the embedded cluster's, which is started (and its
database created) on first use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import logging
import os
import threading
import uuid as uuid_
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, create_engine

from stave.infra.embedded_pg import EmbeddedPostgres
from stave.infra.errors import DatabaseUnavailable, first_line
from stave.infra.settings import Settings, get_settings, mask_url

log = logging.getLogger(__name__)

_engine: Engine | None = None
_engine_url: str | None = None
_engine_lock = threading.Lock()


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(
        settings.embedded_pg_dir,
        log_file=settings.log_dir / "postgres.log",
        port=settings.embedded_pg_port,
        archive_to=settings,
    )


def database_url(settings: Settings | None = None) -> str:
    """The SQLAlchemy URL to use, starting the embedded cluster when none is configured."""
    settings = settings or get_settings()
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    settings.ensure_dirs()
    running = embedded_server(settings).ensure_running()
    ensure_database(running.url("postgres"), settings.database_name)
    return running.url(settings.database_name)


@contextmanager
def one_connection(url: str) -> Iterator[Connection]:
    """One connection to the database at `url`, for a short check or step outside the
    process's pooled engine; the connection and its engine are closed on the way out."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def ensure_database(maintenance_url: str, name: str) -> None:
    """Create database `name` on the server if it does not exist (embedded default and tests)."""
    with psycopg.connect(psycopg_dsn(maintenance_url), autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            # Another process starting at the same moment may create it first: that is fine.
            with contextlib.suppress(
                psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation
            ):
                conn.execute(f'CREATE DATABASE "{name}"')  # name is validated by Settings' pattern


def psycopg_dsn(url: str) -> str:
    """A libpq connection string for a SQLAlchemy URL (psycopg, pg_dump and psql take these)."""
    parsed = make_url(url)
    return str(parsed.set(drivername="postgresql").render_as_string(hide_password=False))


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """A connection URL without its password, and the environment that carries it instead
    (a password on a command line is visible to every user in `ps`)."""
    parsed = make_url(url).set(drivername="postgresql")
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed.set(password=None).render_as_string(hide_password=False), env


def _register_vector(dbapi_connection: Any, _record: Any) -> None:
    # Raw psycopg use (binary COPY of vectors) needs the type registered; before the first
    # migration the extension does not exist yet, and that is fine.

    try:
        register_vector(dbapi_connection)
    except psycopg.ProgrammingError:
        dbapi_connection.rollback()


def make_engine(url: str, settings: Settings | None = None, **overrides: Any) -> Engine:
    """A pooled engine for `url` with Stave's connection settings."""
    settings = settings or get_settings()
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_s,
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": settings.db_connect_timeout_s},
    }
    options.update(overrides)
    engine = create_engine(url, **options)
    event.listen(engine, "connect", _register_vector)
    return engine


def get_engine(settings: Settings | None = None) -> Engine:
    """The process's engine, made on first use."""
    global _engine, _engine_url
    with _engine_lock:
        url = database_url(settings)
        if _engine is None or url != _engine_url:
            if _engine is not None:
                _engine.dispose()
            _engine, _engine_url = make_engine(url, settings), url
        return _engine


def dispose_engine() -> None:
    """Close pooled connections (after migrations change types, and in tests)."""
    global _engine, _engine_url
    with _engine_lock:
        if _engine is not None:
            _engine.dispose()
        _engine, _engine_url = None, None


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(settings)) as session:
        try:
            yield session
            session.commit()
        except Exception:
            session.rollback()
            raise


def check_connection(url: str, *, timeout_s: int = 5) -> str:
    """Connect once and return the server version, or raise DatabaseUnavailable with the cause."""
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": timeout_s})
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    except OperationalError as err:
        raise DatabaseUnavailable(
            f"cannot connect to {describe_url(url)}: {first_line(err.orig)}"
        ) from err
    finally:
        engine.dispose()


def translate_db_error(err: BaseException) -> DatabaseUnavailable | None:
    """A one-line DatabaseUnavailable for a connection-level failure, else None."""
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return DatabaseUnavailable(f"database connection lost: {first_line(err.orig)}{_FIX}")
    if isinstance(err, OperationalError):
        return DatabaseUnavailable(f"database unavailable: {first_line(err.orig)}{_FIX}")
    if isinstance(err, psycopg.OperationalError):
        return DatabaseUnavailable(f"database unavailable: {first_line(err)}{_FIX}")
    return None


_FIX = "; is PostgreSQL up, and STAVE_DATABASE_URL right? (`stave doctor` checks both)"


def describe_url(url: str) -> str:
    parsed: URL = make_url(url)
    return mask_url(
        f"postgresql://{parsed.username or ''}@{parsed.host}:{parsed.port}/{parsed.database}"
    )


def plain_row(row: Any) -> dict[str, Any]:
    """A result row as JSON-ready values: ids and decimals as text and float, times ISO 8601."""

    def plain(value: Any) -> Any:
        if isinstance(value, uuid_.UUID):
            return str(value)
        if isinstance(value, dt.datetime | dt.date):
            return value.isoformat()
        if isinstance(value, decimal.Decimal):
            return float(value)
        return value

    return {key: plain(value) for key, value in row._mapping.items()}


# Roles that row-level security does not apply to: they read user-scoped data as the reporting
# role, which it does apply to (the policies are in migration 0006).
_BYPASSES_RLS = text(
    "SELECT rolsuper OR rolbypassrls OR pg_has_role(current_user, 'stave_migrator', 'MEMBER') "
    "FROM pg_roles WHERE rolname = current_user"
)


def bypasses_rls(conn: Any) -> bool:
    return bool(conn.execute(_BYPASSES_RLS).scalar())


def user_scope_sql(bypass: bool) -> str:
    """Statements that limit the rest of a transaction to one user's rows (bind `user_id`).

    As text, so a single-round-trip query (search) can carry them in front of it."""
    role = "SET LOCAL ROLE stave_reporting; " if bypass else ""
    return f"{role}SET LOCAL app.user_id = %(user_id)s; "


def apply_user_scope(conn: Any, user_id: str) -> bool:
    """For the rest of this transaction, only `user_id`'s rows are visible (and writable).
    Returns whether the connection's role bypasses RLS (for `user_scope_sql`)."""
    bypass = bypasses_rls(conn)
    if bypass:
        conn.execute(text("SET LOCAL ROLE stave_reporting"))
    conn.execute(text("SELECT set_config('app.user_id', :u, true)"), {"u": user_id})
    return bypass
