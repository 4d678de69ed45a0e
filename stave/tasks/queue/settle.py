"""A claimed batch that did not publish: recorded as failed (retryable classes come back after
a backoff until their last attempt) or handed back (a stop); failed tasks re-queued by hand.
Every task that returns to `pending` is counted back into its stream (`streams.py`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.tasks.queue import streams
from stave.tasks.queue.events import log_events

# Error classes worth another attempt: the cause may be gone next time.
RETRYABLE = frozenset({"resource_exhausted", "storage_unavailable", "timeout", "internal"})


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
        streams.add_pending(conn, [r.id for r in rows if r.status == "pending"])
        log_events(
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
        streams.add_pending(conn, [r.id for r in rows])
        log_events(
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
        streams.add_pending(conn, [r.id for r in rows])
        log_events(
            conn,
            [
                {"task_id": r.id, "from": "failed", "to": "pending", "detail": {"requeued_by": by}}
                for r in rows
            ],
        )
    return len(rows)
