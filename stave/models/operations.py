"""Operational records: validation runs, drain runs, backups and archive batches."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, Text, text
from sqlmodel import Field, SQLModel

from stave.models.base import check_in, id_field, jsonb_field, timestamp_field
from stave.models.lifecycle import GENERATION_HOT_DAYS, LifecyclePolicy, lifecycle

BACKUP_KINDS = ("dump", "base")
BACKUP_STATUSES = ("running", "succeeded", "failed")
# stopped: a limit was reached or the run was cancelled or failed; the next run resumes it.
BACKFILL_STATUSES = ("running", "stopped", "completed")


# One Great Expectations run over a batch's metadata.
@lifecycle(LifecyclePolicy(action="archive", hot_days=GENERATION_HOT_DAYS, archive_order=1))
class ValidationRun(SQLModel, table=True):
    __tablename__ = "validation_run"
    __table_args__ = (Index(None, "job_id", "created_at"), Index(None, "created_at", "id"))

    id: uuid.UUID = id_field()
    suite: str = Field(max_length=128)
    job_id: uuid.UUID | None = Field(
        default=None, foreign_key="generation_job.id", ondelete="SET NULL"
    )
    batch_id: str = Field(max_length=128)
    success: bool
    statistics: dict[str, Any] = jsonb_field()
    failed_expectations: list[dict[str, Any]] = jsonb_field(array=True)
    created_at: datetime = timestamp_field()


# One drain of the generation queue in one process (a `generate` or `run-pending` flow run):
# how much of its wall the model worked, for operators (`stave job`, the metrics). Updated
# after each batch, so a run in progress, or one whose host died, shows its figures so far.
@lifecycle(LifecyclePolicy(action="archive", hot_days=GENERATION_HOT_DAYS, archive_order=1))
class DrainRun(SQLModel, table=True):
    __tablename__ = "drain_run"
    __table_args__ = (Index(None, "job_id", "created_at"), Index(None, "updated_at"))

    id: uuid.UUID = id_field()
    worker: str = Field(max_length=128)  # the lease owner: host:pid:token
    host: str = Field(max_length=64)
    job_id: uuid.UUID | None = None  # the job it drained, or None for every job's tasks
    flow_run_id: uuid.UUID | None = None
    batches: int = Field(default=0)
    clips: int = Field(default=0)
    model_s: float = 0.0  # the model's own time (a GPU's busy time)
    wall_s: float = 0.0  # from the drain's start to its last update
    ended: bool = False
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


# A backup in the object store; only a row with status 'succeeded' claims a usable backup.
@lifecycle(LifecyclePolicy(action="retention"))
class BackupRecord(SQLModel, table=True):
    __tablename__ = "backup_record"
    __table_args__ = (
        CheckConstraint(check_in("kind", BACKUP_KINDS), name="kind"),
        CheckConstraint(check_in("status", BACKUP_STATUSES), name="status"),
        Index(None, "status", "created_at"),
    )

    id: uuid.UUID = id_field()
    env: str = Field(max_length=16)
    kind: str = Field(max_length=16)
    status: str = Field(default="running", max_length=16)
    object_key: str = Field(max_length=512, unique=True)
    bytes: int | None = Field(default=None, sa_type=BigInteger)
    sha256: str | None = Field(default=None, max_length=64)
    server_version: str | None = Field(default=None, max_length=64)
    manifest: dict[str, Any] = jsonb_field()
    error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = timestamp_field()
    finished_at: datetime | None = timestamp_field(nullable=True)
    verified_at: datetime | None = timestamp_field(nullable=True)


# One Parquet file of archived rows, verified before its rows left the hot table. The files of
# one batch (a root table's rows and the rows that travel with them) share `group_id`; they
# are `writing` until the rows are deleted in the same transaction that makes them
# `committed`, so a crash in between leaves files a rerun recognises and removes.
ARCHIVE_STATUSES = ("writing", "committed")


@lifecycle(LifecyclePolicy(action="keep"))
class ArchiveBatch(SQLModel, table=True):
    __tablename__ = "archive_batch"
    __table_args__ = (
        Index(None, "table_name", "time_from"),
        Index(None, "group_id"),
        CheckConstraint(check_in("status", ARCHIVE_STATUSES), name="status"),
    )

    id: uuid.UUID = id_field()
    group_id: uuid.UUID | None = None
    root_table: str | None = Field(default=None, max_length=64)
    status: str = Field(default="committed", max_length=16)
    table_name: str = Field(max_length=64)
    object_key: str = Field(max_length=512, unique=True)
    row_count: int = Field(sa_type=BigInteger)
    checksum: str = Field(max_length=64)
    time_from: datetime = timestamp_field(server_default=False)
    time_to: datetime = timestamp_field(server_default=False)
    moved_objects: list[dict[str, Any]] = jsonb_field(array=True)
    created_at: datetime = timestamp_field()
    restored_at: datetime | None = timestamp_field(nullable=True)


# One latent backfill for an encoder version over a scope (date range, model version). Its
# keyset cursor over audio_asset (created_at, id) advances in the same transaction as the
# embeddings of each batch, so a killed run resumes exactly where its last batch committed.
@lifecycle(LifecyclePolicy(action="keep"))
class BackfillRun(SQLModel, table=True):
    __tablename__ = "backfill_run"
    __table_args__ = (
        CheckConstraint(check_in("status", BACKFILL_STATUSES), name="status"),
        # At most one unfinished run per encoder version and scope: that is the one to resume.
        Index(
            None,
            "encoder_version",
            "scope",
            unique=True,
            postgresql_where=text("status <> 'completed'"),
        ),
        Index(None, "created_at"),
    )

    id: uuid.UUID = id_field()
    encoder_version: str = Field(max_length=64)
    # sha256 over the filters that define which assets belong to the run.
    scope: str = Field(max_length=64)
    params: dict[str, Any] = jsonb_field()
    # Assets created after this instant are not the run's: new clips get their embeddings when
    # they are published, so the run has a fixed end even while production goes on.
    upper_bound: datetime = timestamp_field(server_default=False)
    status: str = Field(default="running", max_length=16)
    cursor_created_at: datetime | None = timestamp_field(nullable=True)
    cursor_id: uuid.UUID | None = None
    planned: int = Field(default=0, sa_type=BigInteger)
    written: int = Field(default=0, sa_type=BigInteger)
    failed: int = Field(default=0, sa_type=BigInteger)
    batches: int = Field(default=0)
    # The newest failures (asset, reason), capped, for `stave embeddings status` and the UI.
    failures: list[dict[str, Any]] = jsonb_field(array=True)
    stats: dict[str, Any] = jsonb_field()
    error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
    finished_at: datetime | None = timestamp_field(nullable=True)
