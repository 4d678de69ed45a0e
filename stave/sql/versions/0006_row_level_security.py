"""per-user isolation: row-level security on user-owned tables when app.user_id is set

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tables with a user_id column. Their dependants (task_event, latent_embedding) are reached
# through them: a search joins audio_asset, so another user's vectors never come back.
USER_TABLES = ("generation_task", "audio_asset", "prompt_revision", "user_preference")
# No user context (workers, backups, archival, operators): every row, as before. A context
# (`SET app.user_id` / set_config in the transaction): that user's rows only, for reading and
# for writing. Superusers and the owner bypass RLS; user-scoped reads run as stave_reporting.
CONDITION = (
    "coalesce(current_setting('app.user_id', true), '') = '' "
    "OR user_id = current_setting('app.user_id', true)"
)
# The report views read as the caller (PostgreSQL 15+), so the policies apply through them.
VIEWS = ("report_model_clips", "report_failures_daily", "report_prompt_history")


def upgrade() -> None:
    for table in USER_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY user_isolation ON {table} USING ({CONDITION}) WITH CHECK ({CONDITION})"
        )
    for view in VIEWS:
        op.execute(f"ALTER VIEW {view} SET (security_invoker = true)")


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"ALTER VIEW {view} RESET (security_invoker)")
    for table in USER_TABLES:
        op.execute(f"DROP POLICY IF EXISTS user_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
