"""Alembic driven from code: `stave db upgrade` and the tests use these, not a shell."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from stave.infra.db import one_connection
from stave.infra.errors import ConfigError, InvalidInput, first_line
from stave.infra.locks import advisory_lock

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "sql"
MIGRATION_LOCK = "stave/migrate"  # one migrating process at a time


def alembic_config(url: str) -> Config:
    """Config for the migrations in sql/ against `url` (works installed or from a checkout)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    with _revision_errors(revision):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    with _revision_errors(revision):
        command.downgrade(alembic_config(url), revision)


@contextmanager
def _revision_errors(revision: str) -> Iterator[None]:
    """Alembic's complaint about a revision it does not know, as one line."""
    try:
        yield
    except CommandError as err:
        raise InvalidInput(f"revision {revision!r}: {first_line(err)}") from None


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current_revision_at(url: str) -> str | None:
    with one_connection(url) as conn:
        return current_revision(conn)


def ensure_at_head(url: str, *, embedded: bool) -> str | None:
    """Before work starts: the embedded database is migrated (a newcomer's machine); an
    external one behind head is refused in one line (migrations there are a deliberate step).
    Returns the revision the database is at."""
    head = head_revision()
    current = current_revision_at(url)
    if current == head:
        return current
    if embedded:
        # Two workers started together would both migrate: one does, under a lock; the other
        # waits, then finds the database at head.
        with one_connection(url) as conn, advisory_lock(conn, MIGRATION_LOCK):
            if current_revision(conn) != head:
                conn.commit()
                upgrade(url)
        return head
    raise ConfigError(
        f"the database is at revision {current or 'none'}, not head {head}: "
        "run `stave db upgrade` first"
    )
