"""Alembic driven from code: `stave db upgrade` and the tests use these, not a shell."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "sql"
MIGRATION_LOCK = 0x57A7E_0001  # pg_advisory_lock key: one migrating process at a time


def alembic_config(url: str) -> Config:
    """Config for the migrations in sql/ against `url` (works installed or from a checkout)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current_revision_at(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def ensure_at_head(url: str, *, embedded: bool) -> str | None:
    """Before work starts: the embedded database is migrated (a newcomer's machine); an
    external one behind head is refused in one line (migrations there are a deliberate step).
    Returns the revision the database is at."""
    from infra.errors import ConfigError

    head = head_revision()
    current = current_revision_at(url)
    if current == head:
        return current
    if embedded:
        # Two workers started together would both migrate: one does, under a lock; the other
        # waits, then finds the database at head.
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
                try:
                    if current_revision(conn) != head:
                        conn.commit()
                        upgrade(url)
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                    conn.commit()
        finally:
            engine.dispose()
        return head
    raise ConfigError(
        f"the database is at revision {current or 'none'}, not head {head}: "
        "run `stave db upgrade` first"
    )
