"""The generation queue in PostgreSQL: claim with SKIP LOCKED and a lease, settle, retry.

A worker claims up to N claimable tasks (pending and due, or running with an expired lease —
its worker died) in one statement; each claim counts an attempt and records the worker and
lease expiry. Every later write is fenced on `lease_owner = worker AND status = 'running'`, so a
worker whose lease expired and whose task was claimed again cannot overwrite the new holder.
A running task whose lease expired after its last attempt fails for good as `timeout`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.models.base import utcnow

# Error classes worth another attempt: the cause may be gone next time.
RETRYABLE = frozenset({"resource_exhausted", "storage_unavailable", "timeout", "internal"})


@dataclass(frozen=True)
class ClaimedTask:
    id: uuid.UUID
    job_id: uuid.UUID
    user_id: str
    prompt: str
    lyrics: str | None
    parameters: dict[str, Any]
    attempts: int
    max_attempts: int
    reclaimed: bool  # its previous worker's lease expired


_EXPIRE = text(
    """
    WITH expired AS (
        SELECT id FROM generation_task
        WHERE status = 'running' AND lease_expires_at < now() AND attempts >= max_attempts
          AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid))
        FOR UPDATE SKIP LOCKED
    ), failed AS (
        UPDATE generation_task t
        SET status = 'failed', error_class = 'timeout', finished_at = now(),
            error_message = 'lease of ' || t.lease_owner || ' expired on the last attempt',
            lease_owner = NULL, lease_expires_at = NULL
        FROM expired WHERE t.id = expired.id
        RETURNING t.id, t.attempts
    )
    INSERT INTO task_event (task_id, from_status, to_status, detail, created_at)
    SELECT id, 'running', 'failed',
           jsonb_build_object('error_class', 'timeout', 'attempts', attempts), now()
    FROM failed
    """
)

_CLAIM = text(
    """
    WITH picked AS (
        SELECT id, status AS previous FROM generation_task
        WHERE ((status = 'pending' AND (available_at IS NULL OR available_at <= now()))
            OR (status = 'running' AND lease_expires_at < now() AND attempts < max_attempts))
          AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid))
        ORDER BY created_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE generation_task t
    SET status = 'running', attempts = t.attempts + 1, lease_owner = :worker,
        lease_expires_at = now() + make_interval(secs => :lease_s), available_at = NULL,
        started_at = now(), error_class = NULL, error_message = NULL
    FROM picked WHERE t.id = picked.id
    RETURNING t.id, t.job_id, t.user_id, t.prompt, t.lyrics, t.parameters, t.attempts,
              t.max_attempts, picked.previous, t.lease_expires_at, t.created_at
    """
)

_EVENTS = text(
    """
    INSERT INTO task_event (task_id, from_status, to_status, detail, created_at)
    SELECT CAST(e->>'task_id' AS uuid), e->>'from', e->>'to', e->'detail', now()
    FROM jsonb_array_elements(CAST(:events AS jsonb)) AS e
    """
)


def _log_events(conn: Connection, events: list[dict[str, Any]]) -> None:
    if events:
        conn.execute(_EVENTS, {"events": json.dumps(events, default=str)})


def claim(
    engine: Engine,
    worker: str,
    limit: int,
    lease_s: float,
    job_id: uuid.UUID | None = None,
) -> list[ClaimedTask]:
    """Claim up to `limit` tasks (oldest first) for `worker`, each leased for `lease_s`."""
    params = {"job_id": str(job_id) if job_id else None}
    with engine.begin() as conn:
        conn.execute(_EXPIRE, params)
        rows = list(
            conn.execute(
                _CLAIM, {**params, "limit": limit, "worker": worker, "lease_s": lease_s}
            ).all()
        )
        _log_events(
            conn,
            [
                {
                    "task_id": r.id,
                    "from": r.previous,
                    "to": "running",
                    "detail": {
                        "worker": worker,
                        "attempt": r.attempts,
                        "lease_expires_at": r.lease_expires_at.isoformat(),
                        **({"reclaimed": True} if r.previous == "running" else {}),
                    },
                }
                for r in rows
            ],
        )
    rows.sort(key=lambda r: (r.created_at, r.id))
    return [
        ClaimedTask(
            id=r.id,
            job_id=r.job_id,
            user_id=r.user_id,
            prompt=r.prompt,
            lyrics=r.lyrics,
            parameters=r.parameters,
            attempts=r.attempts,
            max_attempts=r.max_attempts,
            reclaimed=r.previous == "running",
        )
        for r in rows
    ]


def fail(
    engine: Engine,
    worker: str,
    task_ids: list[uuid.UUID],
    error_class: str,
    message: str,
    *,
    backoff_s: float,
    detail: dict[str, Any] | None = None,
) -> dict[uuid.UUID, str]:
    """Record a failure; retryable classes go back to pending after a backoff until the last
    attempt. Returns each task's new status (tasks no longer held by `worker` are left alone)."""
    retryable = error_class in RETRYABLE
    message = message.strip().splitlines()[0][:2000] if message.strip() else error_class
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                """
                UPDATE generation_task
                SET status = CASE WHEN :retryable AND attempts < max_attempts
                                  THEN 'pending' ELSE 'failed' END,
                    available_at = CASE WHEN :retryable AND attempts < max_attempts
                        THEN now() + make_interval(secs => :backoff * power(2, attempts - 1))
                        END,
                    finished_at = CASE WHEN :retryable AND attempts < max_attempts
                                       THEN NULL ELSE now() END,
                    error_class = :error_class, error_message = :message,
                    lease_owner = NULL, lease_expires_at = NULL
                WHERE id = ANY(:ids) AND lease_owner = :worker AND status = 'running'
                RETURNING id, status, attempts, available_at
                """
            ),
            {
                "ids": task_ids,
                "worker": worker,
                "retryable": retryable,
                "backoff": backoff_s,
                "error_class": error_class,
                "message": message,
            },
        ).all()
        _log_events(
            conn,
            [
                {
                    "task_id": r.id,
                    "from": "running",
                    "to": r.status,
                    "detail": {
                        "error_class": error_class,
                        "message": message,
                        "attempt": r.attempts,
                        **({"retry_at": r.available_at.isoformat()} if r.available_at else {}),
                        **(detail or {}),
                    },
                }
                for r in rows
            ],
        )
    return {r.id: r.status for r in rows}


def release(engine: Engine, worker: str, task_ids: list[uuid.UUID], reason: str) -> int:
    """Hand tasks back: `worker`'s running tasks return to pending at once, their attempt
    not counted, so a re-run or another worker takes them without waiting out the lease."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                """
                UPDATE generation_task
                SET status = 'pending', attempts = greatest(attempts - 1, 0),
                    available_at = now(), lease_owner = NULL, lease_expires_at = NULL
                WHERE id = ANY(:ids) AND lease_owner = :worker AND status = 'running'
                RETURNING id
                """
            ),
            {"ids": task_ids, "worker": worker},
        ).all()
        _log_events(
            conn,
            [
                {
                    "task_id": r.id,
                    "from": "running",
                    "to": "pending",
                    "detail": {"released": reason},
                }
                for r in rows
            ],
        )
    return len(rows)


def requeue_failed(engine: Engine, job_id: uuid.UUID, *, by: str) -> int:
    """Put a job's failed tasks back in the queue with fresh attempts (`stave retry`)."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                """
                UPDATE generation_task
                SET status = 'pending', attempts = 0, available_at = NULL, finished_at = NULL,
                    error_class = NULL, error_message = NULL
                WHERE job_id = :job_id AND status = 'failed'
                RETURNING id, error_class
                """
            ),
            {"job_id": job_id},
        ).all()
        _log_events(
            conn,
            [
                {"task_id": r.id, "from": "failed", "to": "pending", "detail": {"requeued_by": by}}
                for r in rows
            ],
        )
    return len(rows)


@dataclass(frozen=True)
class QueueState:
    counts: dict[str, int]
    next_due: datetime | None  # earliest time a waiting task becomes claimable

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
        next_due = conn.execute(
            text(
                "SELECT min(CASE WHEN status = 'pending' THEN coalesce(available_at, now()) "
                "ELSE lease_expires_at END) FROM generation_task "
                "WHERE status IN ('pending', 'running') "
                "AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid))"
            ),
            {"job_id": str(job_id) if job_id else None},
        ).scalar_one()
    return QueueState({str(k): int(v) for k, v in counts.items()}, next_due)


def due_now(engine: Engine, job_id: uuid.UUID | None = None) -> bool:
    """Whether a claim would find work now: a cheap check (the queue's partial indexes) for
    a drain that stays up between runs."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM generation_task WHERE ("
                    "(status = 'pending' AND (available_at IS NULL OR available_at <= now())) "
                    "OR (status = 'running' AND lease_expires_at < now())) "
                    "AND (CAST(:job_id AS uuid) IS NULL OR job_id = CAST(:job_id AS uuid)))"
                ),
                {"job_id": str(job_id) if job_id else None},
            ).scalar_one()
        )


def seconds_until(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return max(0.0, (moment - utcnow()).total_seconds())
