"""find a clip's batch by the key its members share: generation records name their batch by a
key instead of listing every member in every record

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "(provenance -> 'batch' ->> 'key')"


def upgrade() -> None:
    op.create_index(
        "ix_generation_task_batch_key",
        "generation_task",
        [sa.text(KEY)],
        postgresql_where=sa.text(f"{KEY} IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_generation_task_batch_key", table_name="generation_task")
