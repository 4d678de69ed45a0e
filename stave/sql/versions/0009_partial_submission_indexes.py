"""index only the rows that have a value: generation_task by model version (pending tasks have
none) and prompt_revision by parent (most revisions start a history), so a bulk submission's
rows stay off both indexes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, columns): frozen copies (migrations import no application code).
INDEXES = (
    (
        "ix_generation_task_model_version_id_created_at",
        "generation_task",
        ["model_version_id", "created_at"],
        "model_version_id",
    ),
    ("ix_prompt_revision_parent_id", "prompt_revision", ["parent_id"], "parent_id"),
)


def upgrade() -> None:
    for name, table, columns, column in INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, postgresql_where=sa.text(f"{column} IS NOT NULL"))


def downgrade() -> None:
    for name, table, columns, _ in INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns)
