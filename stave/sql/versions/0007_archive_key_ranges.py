"""archival by key range: (created_at, id) indexes on the archived tables, and the
stave_archiver role, which may delete a closed group with the foreign-key triggers off

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ARCHIVED = ("generation_task", "generation_job", "prompt_revision", "validation_run")
ARCHIVER = "stave_archiver"


def _as_session_user(grant: str) -> None:
    """Create stave_archiver and run `grant` (GRANT or REVOKE of the parameter) as the session
    user, as far as it may: creating a role needs CREATEROLE, granting a parameter a superuser.
    Migrations run as stave_migrator, which may do neither: step back to the session user for
    these statements, then return. What it may not do is left to an operator; without the
    grant the archive still runs, with the triggers on (slower)."""
    bind = op.get_bind()
    may_create, superuser = bind.execute(
        sa.text(
            "SELECT rolcreaterole OR rolsuper, rolsuper FROM pg_roles WHERE rolname = session_user"
        )
    ).one()
    exists = bind.execute(
        sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": ARCHIVER}
    ).scalar()
    if not exists and not may_create:
        return
    current = bind.execute(sa.text("SELECT current_user")).scalar()
    op.execute("RESET ROLE")
    if not exists:
        op.execute(f"CREATE ROLE {ARCHIVER} NOLOGIN")
    if superuser:
        op.execute(grant)
    if current != bind.execute(sa.text("SELECT session_user")).scalar():
        op.execute(f'SET ROLE "{current}"')


def upgrade() -> None:
    # Archival walks each table in (created_at, id) order and cuts groups as key ranges; the
    # pair index serves that walk, and created_at alone is its prefix. Built in the migration's
    # transaction: on a large production table create it CONCURRENTLY by hand first.
    for table in ARCHIVED:
        op.create_index(
            op.f(f"ix_{table}_created_at_id"), table, ["created_at", "id"], if_not_exists=True
        )
        op.drop_index(op.f(f"ix_{table}_created_at"), table_name=table, if_exists=True)
    # Operators grant stave_archiver to the login the archive worker uses.
    _as_session_user(f"GRANT SET ON PARAMETER session_replication_role TO {ARCHIVER}")


def downgrade() -> None:
    # The role stays: roles belong to the cluster, and another database may use it.
    _as_session_user(f"REVOKE SET ON PARAMETER session_replication_role FROM {ARCHIVER}")
    for table in ARCHIVED:
        op.create_index(op.f(f"ix_{table}_created_at"), table, ["created_at"], if_not_exists=True)
        op.drop_index(op.f(f"ix_{table}_created_at_id"), table_name=table, if_exists=True)
