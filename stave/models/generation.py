"""The generation aggregate: a user's prompt history, bulk jobs, the tasks they make, events."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, Text, text
from sqlmodel import Field, SQLModel

from stave.infra.errors import ERROR_CLASSES
from stave.models.base import check_in, id_field, jsonb_field, timestamp_field
from stave.models.lifecycle import GENERATION_HOT_DAYS, LifecyclePolicy, lifecycle


class TaskStatus(StrEnum):
    pending = "pending"
    running = "running"
    published = "published"
    quarantined = "quarantined"
    failed = "failed"
    cancelled = "cancelled"


STATUSES = tuple(s.value for s in TaskStatus)


# A job's class in the queue: a higher class is always claimed first (ARCHITECTURE.md, "The
# queue"). Listed highest first.
class Priority(StrEnum):
    interactive = "interactive"
    standard = "standard"
    bulk = "bulk"


PRIORITIES = tuple(p.value for p in Priority)


# One revision of a user's prompt; `parent_id` chains edits so a prompt's history can be traced.
@lifecycle(
    LifecyclePolicy(
        action="archive",
        hot_days=GENERATION_HOT_DAYS,
        archive_order=3,
        # Leaves once no hot task was made from it and no hot revision edits it.
        leaves_when=(
            "NOT EXISTS (SELECT 1 FROM generation_task t WHERE t.prompt_revision_id = r.id) "
            "AND NOT EXISTS (SELECT 1 FROM prompt_revision c WHERE c.parent_id = r.id)"
        ),
    )
)
class PromptRevision(SQLModel, table=True):
    __tablename__ = "prompt_revision"
    # (created_at, id): archival walks the rows past the hot period in this order.
    __table_args__ = (
        Index(None, "user_id", "created_at"),
        Index(None, "created_at", "id"),
        # Most revisions start a history (no parent): only edits are indexed, which keeps a
        # bulk submission's one revision per row off this index.
        Index(
            "ix_prompt_revision_parent_id",
            "parent_id",
            postgresql_where=text("parent_id IS NOT NULL"),
        ),
    )

    id: uuid.UUID = id_field()
    user_id: str = Field(max_length=128)
    parent_id: uuid.UUID | None = Field(
        default=None, foreign_key="prompt_revision.id", ondelete="SET NULL"
    )
    prompt: str = Field(max_length=512)
    lyrics: str | None = Field(default=None, max_length=4096)
    created_at: datetime = timestamp_field()


# One bulk submission: who sent which file, with which parameters, and what was rejected.
@lifecycle(
    LifecyclePolicy(
        action="archive",
        hot_days=GENERATION_HOT_DAYS,
        archive_order=2,
        # Leaves once none of its tasks is hot.
        leaves_when="NOT EXISTS (SELECT 1 FROM generation_task t WHERE t.job_id = r.id)",
    )
)
class GenerationJob(SQLModel, table=True):
    __tablename__ = "generation_job"
    __table_args__ = (
        CheckConstraint(check_in("priority", PRIORITIES), name="priority"),
        Index(None, "submitted_by", "created_at"),
        Index(None, "source_sha256"),
        Index(None, "created_at", "id"),
    )

    id: uuid.UUID = id_field()
    submitted_by: str = Field(max_length=128)
    source_uri: str | None = Field(default=None, max_length=1024)
    source_sha256: str | None = Field(default=None, max_length=64)
    parameters: dict[str, Any] = jsonb_field()
    total_rows: int = 0
    accepted_rows: int = 0
    rejected_rows: int = 0
    rejections: list[dict[str, Any]] = jsonb_field(array=True)
    # Its class in the queue, and whether its pending tasks are held back (`stave job ID
    # --pause`); both changeable while it runs.
    priority: str = Field(
        default=Priority.standard.value,
        max_length=16,
        sa_column_kwargs={"server_default": Priority.standard.value},
    )
    paused: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    created_at: datetime = timestamp_field()
    finished_at: datetime | None = timestamp_field(nullable=True)


# One clip to make, with its lease while a worker holds it.
@lifecycle(
    LifecyclePolicy(
        action="archive",
        hot_days=GENERATION_HOT_DAYS,
        travels_with=("task_event", "audio_asset", "latent_embedding"),
        archive_order=0,
    )
)
class GenerationTask(SQLModel, table=True):
    __tablename__ = "generation_task"
    __table_args__ = (
        CheckConstraint(check_in("status", STATUSES), name="status"),
        Index(None, "created_at", "id"),
        CheckConstraint(
            "error_class IS NULL OR " + check_in("error_class", ERROR_CLASSES), name="error_class"
        ),
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name="attempts"),
        Index(None, "user_id", "created_at"),
        # Tasks get a model version when published: pending ones (a bulk submission's every
        # row) stay off this index.
        Index(
            "ix_generation_task_model_version_id_created_at",
            "model_version_id",
            "created_at",
            postgresql_where=text("model_version_id IS NOT NULL"),
        ),
        Index(None, "job_id"),
        # A claim takes a stream's (a job's tasks of one user) oldest pending tasks; the index
        # stays as small as the queue.
        Index(
            "ix_generation_task_pending_stream",
            "job_id",
            "user_id",
            "created_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # Expired leases are found among running tasks only.
        Index(
            "ix_generation_task_running_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: uuid.UUID = id_field()
    job_id: uuid.UUID = Field(foreign_key="generation_job.id", ondelete="CASCADE")
    user_id: str = Field(max_length=128)
    prompt_revision_id: uuid.UUID | None = Field(
        default=None, foreign_key="prompt_revision.id", ondelete="SET NULL", index=True
    )
    prompt: str = Field(max_length=512)
    lyrics: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] = jsonb_field()
    idempotency_key: str = Field(max_length=128, unique=True)
    status: str = Field(default=TaskStatus.pending.value, max_length=16)
    attempts: int = 0
    max_attempts: int = 3
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = timestamp_field(nullable=True)
    # A retried task waits until then (backoff); NULL: claimable now.
    available_at: datetime | None = timestamp_field(nullable=True)
    device: str | None = Field(default=None, max_length=64)
    error_class: str | None = Field(default=None, max_length=32)
    error_message: str | None = Field(default=None, sa_type=Text)
    model_version_id: uuid.UUID | None = Field(
        default=None, foreign_key="model_version.id", ondelete="RESTRICT"
    )
    timings: dict[str, Any] = jsonb_field()
    # What made the clip, as ACE-Step records it (parameters and seeds actually used, timings
    # per stage) plus model, checkpoint, code and library versions, device and dtype: enough
    # to regenerate it bit for bit. Its batch is found by the key its members share
    # (`ix_generation_task_batch_key`, an expression index: in the migrations only, since
    # autogenerate cannot compare expression indexes; stave/sql/autogen.py).
    provenance: dict[str, Any] = jsonb_field()
    created_at: datetime = timestamp_field()
    started_at: datetime | None = timestamp_field(nullable=True)
    finished_at: datetime | None = timestamp_field(nullable=True)


# Every status change of a task: the audit trail.
@lifecycle(LifecyclePolicy(action="follow", follows="generation_task"))
class TaskEvent(SQLModel, table=True):
    __tablename__ = "task_event"
    __table_args__ = (Index(None, "task_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    task_id: uuid.UUID = Field(foreign_key="generation_task.id", ondelete="CASCADE")
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    detail: dict[str, Any] = jsonb_field()
    created_at: datetime = timestamp_field()
