"""The queue's own records: the streams of work that wait, and each user's share.

A stream is one job's tasks of one user (most jobs have one user). A claim chooses streams
first (a small table: the jobs with work, not the tasks), then takes each chosen stream's
oldest pending tasks by an index (ARCHITECTURE.md, "The queue").
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Index, text
from sqlmodel import Field, SQLModel

from stave.models.base import check_in, timestamp_field
from stave.models.generation import PRIORITIES, Priority
from stave.models.lifecycle import LifecyclePolicy, lifecycle


# One job's work for one user while any of it is pending or running; deleted once none is.
@lifecycle(LifecyclePolicy(action="keep"))
class QueueStream(SQLModel, table=True):
    __tablename__ = "queue_stream"
    __table_args__ = (
        CheckConstraint(check_in("priority", PRIORITIES), name="priority"),
        # A claim reads each class's best streams by these, a few rows, however many wait.
        Index(None, "priority", "user_key", "created_at"),
        Index(None, "waiting_since"),
    )

    # No foreign key: a stream is removed by the claim that finds it empty, and archival
    # (which deletes with the foreign-key triggers off) only takes jobs with no hot task.
    job_id: uuid.UUID = Field(primary_key=True)
    user_id: str = Field(primary_key=True, max_length=128)
    priority: str = Field(default=Priority.standard.value, max_length=16)  # the job's
    paused: bool = False  # the job's
    pending: int = 0  # its tasks pending (claimable now or after a backoff)
    # Nothing of it can be claimed before this (every pending task in backoff, or only
    # running ones whose leases end then); NULL: now.
    due_at: datetime | None = timestamp_field(nullable=True)
    # Its user's share as the claims that last held it saw it (`user_share.log_served` less
    # log2 of the weight): the order within a class. -Infinity: the user was never served.
    user_key: float = Field(
        default=float("-inf"), sa_column_kwargs={"server_default": text("'-Infinity'")}
    )
    # Clips claimed, decaying with STAVE_FAIR_SHARE_HALF_LIFE_S, as of `served_at`.
    served: float = 0.0
    served_at: datetime = timestamp_field()
    # Last claimed from (or queued): a stream waiting past STAVE_QUEUE_AGING_S is claimed as
    # the next class up, so nothing starves.
    waiting_since: datetime = timestamp_field()
    created_at: datetime = timestamp_field()


# A user's weight in the fair share (default 1) and the clips recently claimed for them.
@lifecycle(LifecyclePolicy(action="keep"))
class UserShare(SQLModel, table=True):
    __tablename__ = "user_share"
    __table_args__ = (CheckConstraint("weight > 0", name="weight"),)

    user_id: str = Field(primary_key=True, max_length=128)
    weight: float = Field(default=1.0, sa_column_kwargs={"server_default": text("1")})
    # log2 of the clips claimed for them, each counted at 2^(its time / half-life): the served
    # figure decayed to any time T is 2^(log_served - T / half-life), so shares compare
    # without being brought up to date. NULL: never served.
    log_served: float | None = None
    created_at: datetime = timestamp_field()
