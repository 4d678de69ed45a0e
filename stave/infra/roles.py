"""The three database roles (created by migrations 0001 and 0007), and what each may do.

They are NOLOGIN group roles: operators create login users IN ROLE one of them, so no password
ever lives in a migration. The migrator owns every object; the app role has only the table
privileges the flows need (no DDL); the reporting role reads.
"""

from sqlalchemy import text
from sqlalchemy.engine import Connection

MIGRATOR = "stave_migrator"
APP = "stave_app"
REPORTING = "stave_reporting"
ALL_ROLES = (MIGRATOR, APP, REPORTING)
# Migration 0007's role for archive workers (fast deletes may skip triggers).
ARCHIVER = "stave_archiver"

APP_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def assume_migrator(connection: Connection) -> bool:
    """`SET ROLE stave_migrator` when the session user may, so new objects get the right owner.

    Roles are cluster-wide, grants per database: in a database the first migration has not
    reached yet, the migrator exists but may not create anything, so stay the session user.
    SET ROLE is session state; it outlives the transaction it was issued in.
    """
    ready = connection.execute(
        text(
            "SELECT pg_has_role(session_user, oid, 'MEMBER')"
            " AND has_schema_privilege(oid, 'public', 'CREATE')"
            " FROM pg_roles WHERE rolname = :r"
        ),
        {"r": MIGRATOR},
    ).scalar()
    if ready:
        connection.execute(text(f"SET ROLE {MIGRATOR}"))
    return bool(ready)


def ensure_cluster_roles(connection: Connection) -> None:
    """Create the roles, and the server-wide grants, that migrations made on the server a dump
    came from. Roles live in the server, not in a database, so a dump restored into a new
    server (the day the old one is lost) needs them before its objects can name their owners.
    Needs a role that may create roles; idempotent."""
    for role in (*ALL_ROLES, ARCHIVER):
        connection.execute(
            text(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
                f"THEN CREATE ROLE {role} NOLOGIN; END IF; END $$"
            )
        )
    connection.execute(text(f"GRANT {MIGRATOR} TO SESSION_USER"))
    superuser = connection.execute(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = session_user")
    ).scalar()
    if superuser:
        connection.execute(text(f"GRANT SET ON PARAMETER session_replication_role TO {ARCHIVER}"))
