"""The streams a claim considers: a few rows read by index, however many streams wait.

Per class, best first: `(priority, user_key, created_at)` gives each class's streams in the
order of their user's share (as last seen), and the claim reads until it has enough; the
streams waiting past the aging time are read by `waiting_since`. Every row read is locked with
`FOR UPDATE SKIP LOCKED`: concurrent claims read different streams, and none waits on
another's. The users' shares are then read exactly (their rows, not the streams' copies) and
the plan is made from those (`fair.py`); the claim writes the streams' copies back when it
ends, so a stale one costs at most a look.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from stave.models.generation import PRIORITIES
from stave.tasks.queue.fair import Candidate, QueuePolicy, decayed

_COLUMNS = """
    q.job_id, q.user_id, q.priority, q.pending, q.created_at,
    extract(epoch FROM now() - q.waiting_since) AS waited_s,
    q.served AS job_served, extract(epoch FROM now() - q.served_at) AS job_age_s,
    coalesce(u.weight, 1) AS weight, u.log_served
"""
# Each stream's user's share as it is (their row, not the stream's copy), read with it.
_FROM = "queue_stream q LEFT JOIN user_share u ON u.user_id = q.user_id"
_DUE = "NOT q.paused AND (q.due_at IS NULL OR q.due_at <= now())"

_OF_CLASS = text(
    f"""
    SELECT {_COLUMNS} FROM {_FROM}
    WHERE q.priority = :priority AND {_DUE}
    ORDER BY q.user_key, q.created_at
    LIMIT :n
    FOR UPDATE OF q SKIP LOCKED
    """
)

_AGED = text(
    f"""
    SELECT {_COLUMNS} FROM {_FROM}
    WHERE q.waiting_since < now() - make_interval(secs => :aging_s) AND {_DUE}
      AND q.priority <> :top
    ORDER BY q.waiting_since
    LIMIT :n
    FOR UPDATE OF q SKIP LOCKED
    """
)

_OF_JOB = text(
    f"""
    SELECT {_COLUMNS} FROM {_FROM}
    WHERE q.job_id = :job AND {_DUE}
    ORDER BY q.user_key, q.created_at
    LIMIT :n
    FOR UPDATE OF q SKIP LOCKED
    """
)

_ANY_DUE = text(
    f"""
    SELECT EXISTS (SELECT 1 FROM queue_stream q WHERE {_DUE}
                   AND (CAST(:job AS uuid) IS NULL OR q.job_id = CAST(:job AS uuid)))
    """
)
# When every stream with work is another claim's for the moment (one big job, many
# workers), a claim looks again a few times, a little later each, before it comes back
# empty-handed: claims take milliseconds. It never waits on a stream's row (two claims
# waiting on each other's rows would deadlock).
RETRY_S = (0.01, 0.02, 0.04, 0.08)


def read(
    conn: Connection, job_id: uuid.UUID | None, policy: QueuePolicy, wanted: int
) -> list[Candidate]:
    """Up to `wanted` streams, best first by class (aging counted) and share, locked."""
    rows = _locked(conn, job_id, policy, wanted)
    for pause in RETRY_S:
        if rows or not conn.execute(_ANY_DUE, {"job": job_id}).scalar_one():
            break
        time.sleep(pause)
        rows = _locked(conn, job_id, policy, wanted)
    unique = {(r.job_id, r.user_id): r for r in rows}
    ordered = sorted(unique.values(), key=lambda r: r.created_at)
    now = time.time()
    return [
        Candidate(
            job_id=r.job_id,
            user_id=r.user_id,
            priority=r.priority,
            pending=int(r.pending),
            waited_s=float(r.waited_s),
            job_served=decayed(float(r.job_served), float(r.job_age_s), policy.half_life_s),
            user_served=served_now(r.log_served, policy.half_life_s, now),
            weight=float(r.weight),
            created_order=order,
        )
        for order, r in enumerate(ordered)
    ]


def _locked(
    conn: Connection, job_id: uuid.UUID | None, policy: QueuePolicy, wanted: int
) -> list[Any]:
    """The best streams no other claim holds, locked: the job's, or by class (the aged
    first, read as the next class up)."""
    if job_id is not None:
        return list(conn.execute(_OF_JOB, {"job": job_id, "n": wanted}))
    rows: list[Any] = []
    if policy.aging_s > 0:
        rows += conn.execute(
            _AGED, {"aging_s": policy.aging_s, "top": PRIORITIES[0], "n": wanted}
        ).all()
    for priority in PRIORITIES:
        if len(rows) >= wanted:
            break
        rows += conn.execute(_OF_CLASS, {"priority": priority, "n": wanted}).all()
    return rows


def served_now(log_served: float | None, half_life_s: float, now: float | None = None) -> float:
    """A user's clips served, decayed to `now` (epoch seconds), from their `log_served`."""
    if log_served is None or half_life_s <= 0:
        return 0.0
    exponent = log_served - (time.time() if now is None else now) / half_life_s
    return 0.0 if exponent < -1000 else math.pow(2.0, exponent)
