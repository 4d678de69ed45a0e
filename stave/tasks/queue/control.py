"""An operator's hand on the queue: a job's class, pause, resume and cancel; users' weights.

Pausing holds a job's pending tasks back (those running finish); cancelling ends its pending
tasks as `cancelled`, each with an event; a class changes what the job's next claims see.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, NotFound
from stave.models.generation import PRIORITIES
from stave.tasks.queue.candidates import served_now
from stave.tasks.queue.events import log_events


def check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise InvalidInput(f"priority {priority!r}: use one of {', '.join(PRIORITIES)}")
    return priority


def _job_update(engine: Engine, job_id: uuid.UUID, column: str, value: Any) -> None:
    """Set the job's `column` and its streams' (one transaction)."""
    with engine.begin() as conn:
        found = conn.execute(
            text(f"UPDATE generation_job SET {column} = :v WHERE id = :j RETURNING id"),
            {"v": value, "j": job_id},
        ).first()
        if found is None:
            raise NotFound(f"no job {job_id}")
        conn.execute(
            text(f"UPDATE queue_stream SET {column} = :v WHERE job_id = :j"),
            {"v": value, "j": job_id},
        )


def set_priority(engine: Engine, job_id: uuid.UUID, priority: str) -> None:
    _job_update(engine, job_id, "priority", check_priority(priority))


def pause(engine: Engine, job_id: uuid.UUID) -> None:
    _job_update(engine, job_id, "paused", True)


def resume(engine: Engine, job_id: uuid.UUID) -> None:
    _job_update(engine, job_id, "paused", False)


def cancel(engine: Engine, job_id: uuid.UUID, *, by: str) -> int:
    """End the job's pending tasks as `cancelled` (with an event each); running ones finish.
    How many were cancelled."""
    with engine.begin() as conn:
        if conn.execute(text("SELECT 1 FROM generation_job WHERE id = :j"), {"j": job_id}).first():
            rows = conn.execute(
                text(
                    "UPDATE generation_task SET status = 'cancelled', finished_at = now(), "
                    "available_at = NULL WHERE job_id = :j AND status = 'pending' RETURNING id"
                ),
                {"j": job_id},
            ).all()
        else:
            raise NotFound(f"no job {job_id}")
        conn.execute(text("UPDATE queue_stream SET pending = 0 WHERE job_id = :j"), {"j": job_id})
        log_events(
            conn,
            [
                {"task_id": r.id, "from": "pending", "to": "cancelled", "detail": {"by": by}}
                for r in rows
            ],
        )
    return len(rows)


def set_weight(engine: Engine, user_id: str, weight: float) -> None:
    """A user's weight in the fair share (1 by default): 2 gets twice a user of 1's part."""
    if not weight > 0:
        raise InvalidInput(f"weight {weight}: must be a number above 0")
    with engine.begin() as conn:
        # The streams first, the user's row after, as claims lock them (no deadlock).
        conn.execute(
            text(
                "UPDATE queue_stream SET user_key = coalesce((SELECT log_served FROM user_share "
                "WHERE user_id = :u) - ln(:w) / ln(2), '-Infinity') WHERE user_id = :u"
            ),
            {"u": user_id, "w": weight},
        )
        conn.execute(
            text(
                "INSERT INTO user_share (user_id, weight, created_at) VALUES (:u, :w, now()) "
                "ON CONFLICT (user_id) DO UPDATE SET weight = EXCLUDED.weight"
            ),
            {"u": user_id, "w": weight},
        )


def shares(engine: Engine, half_life_s: float) -> list[dict[str, Any]]:
    """Every user with a weight or recent service: weight, clips served lately (decayed),
    pending tasks."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """
                SELECT coalesce(u.user_id, q.user_id) AS user_id, coalesce(u.weight, 1) AS weight,
                       u.log_served, coalesce(sum(q.pending), 0) AS pending
                FROM user_share u FULL JOIN queue_stream q ON q.user_id = u.user_id
                GROUP BY 1, 2, 3 ORDER BY 1
                """
            ),
        )
        return [
            {
                "user_id": r.user_id,
                "weight": float(r.weight),
                "served": round(served_now(r.log_served, half_life_s), 1),
                "pending": int(r.pending),
            }
            for r in rows
        ]
