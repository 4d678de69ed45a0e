"""Operational records: validation runs, backups and archive batches."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, Text
from sqlmodel import Field, SQLModel

from models.base import check_in, id_field, jsonb_field, timestamp_field
from models.lifecycle import GENERATION_HOT_DAYS, LifecyclePolicy, lifecycle

BACKUP_KINDS = ("dump", "base")
BACKUP_STATUSES = ("running", "succeeded", "failed")


# One Great Expectations run over a batch's metadata.
@lifecycle(LifecyclePolicy(action="archive", hot_days=GENERATION_HOT_DAYS))
class ValidationRun(SQLModel, table=True):
    __tablename__ = "validation_run"
    __table_args__ = (Index(None, "job_id", "created_at"),)

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


# One Parquet file of archived rows, verified before its rows left the hot table.
@lifecycle(LifecyclePolicy(action="keep"))
class ArchiveBatch(SQLModel, table=True):
    __tablename__ = "archive_batch"
    __table_args__ = (Index(None, "table_name", "time_from"),)

    id: uuid.UUID = id_field()
    table_name: str = Field(max_length=64)
    object_key: str = Field(max_length=512, unique=True)
    row_count: int = Field(sa_type=BigInteger)
    checksum: str = Field(max_length=64)
    time_from: datetime = timestamp_field(server_default=False)
    time_to: datetime = timestamp_field(server_default=False)
    moved_objects: list[dict[str, Any]] = jsonb_field(array=True)
    created_at: datetime = timestamp_field()
    restored_at: datetime | None = timestamp_field(nullable=True)
