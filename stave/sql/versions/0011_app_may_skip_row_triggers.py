"""the app role may set session_replication_role: a bulk submission writes its job's tasks,
revisions and events without a foreign-key trigger per row, the references being its own rows
(written in the same transaction) or parents it locks itself

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP = "stave_app"  # a frozen copy (migrations import no application code)


def _as_superuser(statement: str) -> None:
    """Run `statement` as the session user when that is a superuser (only a superuser may grant
    a parameter); migrations run as stave_migrator, so step back to the session user for it and
    return. Run by anyone else, the migration changes nothing: submissions still run, with the
    triggers on (slower), and a DBA may run the GRANT by hand."""
    bind = op.get_bind()
    superuser = bind.execute(
        sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = session_user")
    ).scalar()
    if not superuser:
        return
    current = bind.execute(sa.text("SELECT current_user")).scalar()
    op.execute("RESET ROLE")
    op.execute(statement)
    if current != bind.execute(sa.text("SELECT session_user")).scalar():
        op.execute(f'SET ROLE "{current}"')


def upgrade() -> None:
    _as_superuser(f"GRANT SET ON PARAMETER session_replication_role TO {APP}")


def downgrade() -> None:
    _as_superuser(f"REVOKE SET ON PARAMETER session_replication_role FROM {APP}")
