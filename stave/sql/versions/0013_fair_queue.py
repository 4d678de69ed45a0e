"""the fair queue: job priority classes and pause, queue streams and user shares

Existing jobs become `standard` without their tasks being rewritten (a column with a constant
default is metadata only); their pending and running work enters `queue_stream`.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the classes as they were at this revision.
PRIORITIES = ("interactive", "standard", "bulk")
CHECK = "priority IN ('interactive', 'standard', 'bulk')"


def upgrade() -> None:
    op.add_column(
        "generation_job",
        sa.Column("priority", sa.String(length=16), server_default="standard", nullable=False),
    )
    op.add_column(
        "generation_job",
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_check_constraint(op.f("ck_generation_job_priority"), "generation_job", CHECK)
    # Claims take a stream's oldest pending tasks, not the queue's: this index replaces the
    # queue-wide one (a submission maintains one partial index per row, as before).
    op.create_index(
        "ix_generation_task_pending_stream",
        "generation_task",
        ["job_id", "user_id", "created_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_generation_task_pending", table_name="generation_task")
    op.create_table(
        "queue_stream",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("user_key", sa.Float(), server_default=sa.text("'-Infinity'"), nullable=False),
        sa.Column("served", sa.Float(), nullable=False),
        sa.Column(
            "served_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "waiting_since",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(CHECK, name=op.f("ck_queue_stream_priority")),
        sa.PrimaryKeyConstraint("job_id", "user_id", name=op.f("pk_queue_stream")),
    )
    op.create_index(
        op.f("ix_queue_stream_priority_user_key_created_at"),
        "queue_stream",
        ["priority", "user_key", "created_at"],
    )
    op.create_index(op.f("ix_queue_stream_waiting_since"), "queue_stream", ["waiting_since"])
    op.create_table(
        "user_share",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("weight", sa.Float(), server_default=sa.text("1"), nullable=False),
        sa.Column("log_served", sa.Float(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("weight > 0", name=op.f("ck_user_share_weight")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_share")),
    )
    # The work queued before this revision, as streams of the standard class.
    op.execute(
        """
        INSERT INTO queue_stream (job_id, user_id, priority, paused, pending, served,
                                  served_at, waiting_since, created_at)
        SELECT job_id, user_id, 'standard', false, count(*) FILTER (WHERE status = 'pending'),
               0, now(), min(created_at), min(created_at)
        FROM generation_task WHERE status IN ('pending', 'running')
        GROUP BY job_id, user_id
        """
    )


def downgrade() -> None:
    op.drop_table("user_share")
    op.drop_index(op.f("ix_queue_stream_waiting_since"), table_name="queue_stream")
    op.drop_index(op.f("ix_queue_stream_priority_user_key_created_at"), table_name="queue_stream")
    op.drop_table("queue_stream")
    op.create_index(
        "ix_generation_task_pending",
        "generation_task",
        ["created_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_generation_task_pending_stream", table_name="generation_task")
    op.drop_constraint(op.f("ck_generation_job_priority"), "generation_job", type_="check")
    op.drop_column("generation_job", "paused")
    op.drop_column("generation_job", "priority")
