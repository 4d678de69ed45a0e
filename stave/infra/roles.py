"""The three database roles (created by migrations 0001 and 0007), and what each may do.

They are NOLOGIN group roles: operators create login users IN ROLE one of them, so no password
ever lives in a migration. The migrator owns every object; the app role has only the table
privileges the flows need (no DDL), and may set `session_replication_role` (migration 0011) so
a bulk submission can write rows whose references it guarantees itself without a trigger per
row; the reporting role reads.
"""

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.engine import Connection

MIGRATOR = "stave_migrator"
APP = "stave_app"
REPORTING = "stave_reporting"
ALL_ROLES = (MIGRATOR, APP, REPORTING)
# Migration 0007's role for archive workers (fast deletes may skip triggers).
ARCHIVER = "stave_archiver"
# The roles that may set session_replication_role (granted by a superuser: 0007, 0011).
SKIP_TRIGGER_ROLES = (ARCHIVER, APP)

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
    grant_migrator_to_session_user(connection)
    superuser = connection.execute(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = session_user")
    ).scalar()
    if superuser:
        for role in SKIP_TRIGGER_ROLES:
            connection.execute(text(f"GRANT SET ON PARAMETER session_replication_role TO {role}"))


def grant_schema_to_migrator(connection: Connection) -> None:
    """Let the migrator own objects in `public` of a database about to be restored into, as
    the first migration does: the dump makes each table as the connecting login, then hands it
    to stave_migrator, which PostgreSQL refuses unless the new owner may create in the schema
    (a superuser's restore skips the check; the owner login's nightly drill does not)."""
    connection.execute(text(f"GRANT USAGE, CREATE ON SCHEMA public TO {MIGRATOR}"))
    connection.commit()


def may_skip_triggers(conn: Connection, tables: Sequence[str] = ()) -> bool:
    """Whether this role may set `session_replication_role = replica` (a superuser, or a role
    granted it: migrations 0007 and 0011), and `tables` have no triggers of their own, which
    replica would silence along with the foreign-key checks."""
    # Parameter privileges (and has_parameter_privilege) arrived in PostgreSQL 15.
    if int(conn.execute(text("SHOW server_version_num")).scalar_one()) < 150000:
        may = conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    else:
        may = conn.execute(
            text("SELECT has_parameter_privilege('session_replication_role', 'SET')")
        )
    return bool(may.scalar()) and not (tables and has_own_triggers(conn, tables))


def has_own_triggers(conn: Connection, tables: Sequence[str]) -> bool:
    """Whether any of `tables` has a trigger that is not a foreign key's."""
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE NOT tgisinternal "
                "AND tgrelid = ANY(CAST(:t AS regclass[])))"
            ),
            {"t": list(tables)},
        ).scalar()
    )


# PostgreSQL 16 split membership into INHERIT, SET and ADMIN: a login must have SET on the
# migrator to run migrations as it. Before 16, any membership allowed SET ROLE.
CAN_SET_MIGRATOR = (
    "pg_has_role(session_user, 'stave_migrator', CASE WHEN "
    "current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END)"
)


def grant_migrator_to_session_user(connection: Connection) -> None:
    """Make the connecting login a member of the migrator, unless it already may act as it: a
    login that a DBA made a member need not (and, without ADMIN on the role, may not) grant it
    again."""
    connection.execute(
        text(
            f"DO $$ BEGIN IF NOT {CAN_SET_MIGRATOR} THEN "
            f"EXECUTE format('GRANT {MIGRATOR} TO %I', session_user); END IF; END $$"
        )
    )


def missing_privileges(conn: Connection) -> list[str]:
    """What the connecting login lacks to migrate this database from nothing, each as what a
    DBA runs (empty: it may). Checked before the first migration, whose failure would
    otherwise be a permission error from the middle of it."""
    me, superuser, createrole, owner, database = conn.execute(
        text(
            "SELECT r.rolname, r.rolsuper, r.rolcreaterole, "
            "pg_has_role(session_user, d.datdba, 'MEMBER'), d.datname "
            "FROM pg_roles r, pg_database d "
            "WHERE r.rolname = session_user AND d.datname = current_database()"
        )
    ).one()
    if superuser:
        return []
    fixes = []
    if not owner:
        fixes.append(f"ALTER DATABASE {database} OWNER TO {me};")
    vector = conn.execute(
        text(
            "SELECT installed_version IS NOT NULL FROM pg_available_extensions "
            "WHERE name = 'vector'"
        )
    ).scalar()
    if vector is None:
        fixes.append("install pgvector (>= 0.6) on the database server")
    elif not vector:
        fixes.append(f"CREATE EXTENSION vector; (in database {database}: not a trusted extension)")
    existing = set(
        conn.execute(
            text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:r)"), {"r": list(ALL_ROLES)}
        ).scalars()
    )
    absent = [role for role in ALL_ROLES if role not in existing]
    if absent and not createrole:
        fixes += [f"CREATE ROLE {role} NOLOGIN;" for role in absent]
        fixes.append(f"GRANT {MIGRATOR} TO {me};")
    elif MIGRATOR in existing:
        may_set = conn.execute(text(f"SELECT {CAN_SET_MIGRATOR}")).scalar()
        admin = conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = "
                "m.roleid JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = :g "
                "AND u.rolname = session_user AND m.admin_option)"
            ),
            {"g": MIGRATOR},
        ).scalar()
        if not may_set and not admin:
            fixes.append(f"GRANT {MIGRATOR} TO {me};")
    return fixes
