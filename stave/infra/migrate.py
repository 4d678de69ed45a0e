"""Alembic driven from code: `stave db upgrade` and the tests use these, not a shell."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from stave.infra import roles
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
    """Migrate the database at `url` to `revision`, one process at a time (a `stave db
    upgrade` and a first command's migration started together: the second finds it done)."""
    with _one_migrator(url), _revision_errors(revision):
        _check_privileges(url)
        _riding_out_cluster_races(lambda: command.upgrade(alembic_config(url), revision))


def _check_privileges(url: str) -> None:
    """A fresh database: refuse, in one line, a login that may not migrate it, naming what a
    DBA runs (docs/production.md lists why each is needed)."""
    with one_connection(url) as conn:
        if current_revision(conn) is not None:
            return
        fixes = roles.missing_privileges(conn)
        login = conn.execute(text("SELECT session_user")).scalar()
    if fixes:
        raise ConfigError(
            f"the login {login} may not migrate this fresh database: a DBA runs "
            + " ".join(fixes)
            + ' (docs/production.md, "The database")'
        )


def downgrade(url: str, revision: str) -> None:
    with _one_migrator(url), _revision_errors(revision):
        command.downgrade(alembic_config(url), revision)


@contextmanager
def _one_migrator(url: str) -> Iterator[None]:
    with one_connection(url) as conn, advisory_lock(conn, MIGRATION_LOCK):
        yield


# Roles and their memberships are the server's, not a database's: fresh databases of one
# server migrated at once race to create them, and a database's advisory lock cannot order
# that. The loser's migration rolls back whole (a transaction per migration) and is tried
# again, when it finds what the winner made.
CLUSTER_RACE_RETRY_S = (0.2, 0.5, 1.0, 2.0)
_CLUSTER_RACES = {"23505", "42710", "40001", "40P01"}  # unique, duplicate object, serialization


def _riding_out_cluster_races(migrate: Callable[[], None]) -> None:
    for pause in (*CLUSTER_RACE_RETRY_S, None):
        try:
            migrate()
            return
        except DBAPIError as err:
            code = getattr(err.orig, "sqlstate", None)
            racing = code in _CLUSTER_RACES or "tuple concurrently updated" in str(err.orig)
            if pause is None or not racing:
                raise
            time.sleep(pause * (1 + random.random()))


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
        # waits, then finds the database at head (Alembic then has nothing to do).
        upgrade(url)
        return head
    raise ConfigError(
        f"the database is at revision {current or 'none'}, not head {head}: "
        "run `stave db upgrade` first"
    )
