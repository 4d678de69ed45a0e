"""What the queue holds: counts by status, and when a claim will next find work."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.models.base import utcnow


@dataclass(frozen=True)
class QueueState:
    counts: dict[str, int]
    # Earliest time a claim can find work (a paused job's never counts); None: never.
    next_due: datetime | None

    @property
    def open(self) -> int:
        return self.counts.get("pending", 0) + self.counts.get("running", 0)


def job_state(engine: Engine, job_id: uuid.UUID | None = None) -> QueueState:
    """Task counts by status (for one job, or all), and when the next waiting task is due."""
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT status, count(*) FROM generation_task "
                    "WHERE CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid) "
                    "GROUP BY status"
                ),
                {"job_id": str(job_id) if job_id else None},
            )
            .tuples()
            .all()
        )
        # The streams know (`streams.py`); a dead worker's expired leases are due at once.
        next_due = conn.execute(
            text(
                "SELECT least("
                "(SELECT min(coalesce(due_at, now())) FROM queue_stream WHERE NOT paused "
                " AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid))), "
                "(SELECT min(lease_expires_at) FROM generation_task WHERE status = 'running' "
                " AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid))))"
            ),
            {"job_id": str(job_id) if job_id else None},
        ).scalar_one()
    return QueueState({str(k): int(v) for k, v in counts.items()}, next_due)


def due_now(engine: Engine, job_id: uuid.UUID | None = None) -> bool:
    """Whether a claim would find work now: a cheap check (the streams, and the running tasks'
    leases) for a drain that stays up between runs."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM queue_stream WHERE NOT paused AND pending > 0 "
                    " AND (due_at IS NULL OR due_at <= now()) "
                    " AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid))) "
                    "OR EXISTS (SELECT 1 FROM generation_task WHERE status = 'running' "
                    " AND lease_expires_at < now() "
                    " AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid)))"
                ),
                {"job_id": str(job_id) if job_id else None},
            ).scalar_one()
        )


def seconds_until(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return max(0.0, (moment - utcnow()).total_seconds())
