"""archival: archive_batch groups its files and says whether they were committed; every
archived table gets an index on created_at (archival looks for its oldest rows)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ARCHIVED = ("generation_task", "generation_job", "prompt_revision", "validation_run")


def upgrade() -> None:
    # Nullable or constant defaults: no table rewrite.
    op.add_column("archive_batch", sa.Column("group_id", sa.Uuid(), nullable=True))
    op.add_column("archive_batch", sa.Column("root_table", sa.String(length=64), nullable=True))
    op.add_column(
        "archive_batch",
        sa.Column("status", sa.String(length=16), server_default="committed", nullable=False),
    )
    op.create_check_constraint("status", "archive_batch", "status IN ('writing', 'committed')")
    op.create_index(op.f("ix_archive_batch_group_id"), "archive_batch", ["group_id"])
    # Built in the migration's transaction (writes to these tables wait meanwhile); on a large
    # production table, create them CONCURRENTLY by hand first under the same names.
    for table in ARCHIVED:
        op.create_index(op.f(f"ix_{table}_created_at"), table, ["created_at"], if_not_exists=True)


def downgrade() -> None:
    for table in ARCHIVED:
        op.drop_index(op.f(f"ix_{table}_created_at"), table_name=table)
    op.drop_index(op.f("ix_archive_batch_group_id"), table_name="archive_batch")
    op.drop_constraint("status", "archive_batch", type_="check")
    op.drop_column("archive_batch", "status")
    op.drop_column("archive_batch", "root_table")
    op.drop_column("archive_batch", "group_id")
