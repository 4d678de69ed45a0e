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
