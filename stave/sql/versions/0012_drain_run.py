"""drain_run: each drain's model time and wall, so operators see how busy the GPU was

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drain_run",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("flow_run_id", sa.Uuid(), nullable=True),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column("clips", sa.Integer(), nullable=False),
        sa.Column("model_s", sa.Float(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("ended", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drain_run")),
    )
    op.create_index(op.f("ix_drain_run_job_id_created_at"), "drain_run", ["job_id", "created_at"])
    op.create_index(op.f("ix_drain_run_updated_at"), "drain_run", ["updated_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_drain_run_updated_at"), table_name="drain_run")
    op.drop_index(op.f("ix_drain_run_job_id_created_at"), table_name="drain_run")
    op.drop_table("drain_run")
