"""Claiming a batch: whose tasks go next (`fair.py`), then theirs by an index, leased.

One transaction: leases that expired on a task's last attempt fail it as `timeout`; a dead
worker's other tasks are claimed again first (those of a paused job go back to `pending`);
then the best candidate streams no other claim holds are locked (the small table of work that
waits, not the tasks), a plan is made, and each planned stream's oldest pending tasks are
taken with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never take a task twice. A stream
that gave less than planned is settled (removed, or told when it is next due) and the
shortfall planned again among the rest. Each claim counts an attempt
and records the worker and lease expiry; every later write is fenced on
`lease_owner = worker AND status = 'running'`.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.tasks.queue import candidates as candidates_
from stave.tasks.queue import streams
from stave.tasks.queue.events import log_events
from stave.tasks.queue.fair import Candidate, QueuePolicy, allocate

# Streams read (and locked) per claim: a claim of N is a few parts, and quotas may pass some
# over. Concurrent claims lock different streams (SKIP LOCKED): they never queue behind each
# other for the same stream's row, and between them take the best streams in turn.
CANDIDATES = 32
ROUNDS = 3


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
    reclaimed: bool = False  # its previous worker's lease expired


_ANY_EXPIRED = text(
    "SELECT EXISTS (SELECT 1 FROM generation_task "
    "WHERE status = 'running' AND lease_expires_at < now())"
)

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

# A dead worker's tasks (their lease expired before their last attempt) are claimed again
# first: they were chosen before. Those of a paused job go back to pending instead.
_RETAKE = text(
    """
    WITH expired AS (
        SELECT t.id FROM generation_task t JOIN generation_job j ON j.id = t.job_id
        WHERE t.status = 'running' AND t.lease_expires_at < now()
          AND t.attempts < t.max_attempts AND NOT j.paused
          AND (CAST(:job_id AS uuid) IS NULL OR t.job_id = CAST(:job_id AS uuid))
        ORDER BY t.lease_expires_at
        LIMIT :limit
        FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE generation_task t
    SET attempts = t.attempts + 1, lease_owner = :worker,
        lease_expires_at = now() + make_interval(secs => :lease_s), started_at = now()
    FROM expired WHERE t.id = expired.id
    RETURNING t.id, t.job_id, t.user_id, t.prompt, t.lyrics, t.parameters, t.attempts,
              t.max_attempts, t.lease_expires_at, t.created_at
    """
)

_PAUSED_BACK = text(
    """
    WITH expired AS (
        SELECT t.id FROM generation_task t JOIN generation_job j ON j.id = t.job_id
        WHERE t.status = 'running' AND t.lease_expires_at < now()
          AND t.attempts < t.max_attempts AND j.paused
        FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE generation_task t
    SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, available_at = NULL
    FROM expired WHERE t.id = expired.id
    RETURNING t.id
    """
)

_RUNNING = text(
    """
    SELECT job_id, user_id, count(*) AS n FROM generation_task
    WHERE status = 'running' AND (user_id = ANY(:users) OR job_id = ANY(:jobs))
    GROUP BY job_id, user_id
    """
)

_TAKE = text(
    """
    WITH plan AS (
        SELECT * FROM jsonb_to_recordset(CAST(:plan AS jsonb))
            AS p(job_id uuid, user_id text, n int)
    ), picked AS (
        SELECT t.id FROM plan CROSS JOIN LATERAL (
            SELECT id FROM generation_task
            WHERE job_id = plan.job_id AND user_id = plan.user_id AND status = 'pending'
              AND (available_at IS NULL OR available_at <= now())
            ORDER BY created_at, id
            LIMIT plan.n
            FOR UPDATE SKIP LOCKED
        ) t
    ), taken AS (
        UPDATE generation_task t
        SET status = 'running', attempts = t.attempts + 1, lease_owner = :worker,
            lease_expires_at = now() + make_interval(secs => :lease_s), available_at = NULL,
            started_at = now(), error_class = NULL, error_message = NULL
        FROM picked WHERE t.id = picked.id
        RETURNING t.id, t.job_id, t.user_id, t.prompt, t.lyrics, t.parameters, t.attempts,
                  t.max_attempts, t.lease_expires_at, t.created_at
    ), logged AS (
        INSERT INTO task_event (task_id, from_status, to_status, detail, created_at)
        SELECT id, 'pending', 'running',
               jsonb_build_object('worker', CAST(:worker AS text), 'attempt', attempts,
                                  'lease_expires_at', lease_expires_at), now()
        FROM taken
    )
    SELECT * FROM taken
    """
)


def claim(
    engine: Engine,
    worker: str,
    limit: int,
    lease_s: float,
    job_id: uuid.UUID | None = None,
    policy: QueuePolicy | None = None,
) -> list[ClaimedTask]:
    """Claim up to `limit` tasks for `worker` (of one job, or whoever's go next), each leased
    for `lease_s`; in their streams' order, each stream's oldest first."""
    policy = policy or QueuePolicy()
    params = {"job_id": str(job_id) if job_id else None}
    lease = {"worker": worker, "lease_s": lease_s}
    with engine.begin() as conn:
        retaken: list[Any] = []
        if conn.execute(_ANY_EXPIRED).scalar_one():  # a dead worker's leases (seldom)
            conn.execute(_EXPIRE, params)
            streams.add_pending(conn, [r.id for r in conn.execute(_PAUSED_BACK)])
            retaken = list(conn.execute(_RETAKE, {**params, **lease, "limit": limit}))
        log_events(  # the claim's own are written with it (`_TAKE`)
            conn,
            [
                {
                    "task_id": r.id,
                    "from": "running",
                    "to": "running",
                    "detail": {
                        "worker": worker,
                        "attempt": r.attempts,
                        "lease_expires_at": r.lease_expires_at.isoformat(),
                        "reclaimed": True,
                    },
                }
                for r in retaken
            ],
        )
        rows = retaken + _take_planned(conn, worker, limit - len(retaken), lease_s, params, policy)
        rows.sort(key=lambda r: (r.created_at, r.id))
        again = {r.id for r in retaken}
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
            reclaimed=r.id in again,
        )
        for r in rows
    ]


def _take_planned(
    conn: Connection,
    worker: str,
    limit: int,
    lease_s: float,
    params: dict[str, Any],
    policy: QueuePolicy,
) -> list[Any]:
    if limit <= 0:
        return []
    candidates = candidates_.read(conn, params["job_id"], policy, CANDIDATES)
    held = {(c.job_id, c.user_id) for c in candidates}
    settle: set[tuple[uuid.UUID, str]] = set()
    for empty in [c for c in candidates if c.pending <= 0]:
        # Only leases left, or none, or a count behind: recounted at the end; due now, it is
        # claimed meanwhile.
        empty.pending = streams.claimable(conn, empty.job_id, empty.user_id)
        settle.add((empty.job_id, empty.user_id))
    candidates = [c for c in candidates if c.pending > 0]
    if candidates and (policy.user_max_running or policy.job_max_running):
        _count_running(conn, candidates)
    taken_rows: list[Any] = []
    taken: dict[tuple[uuid.UUID, str], int] = {}
    for _ in range(ROUNDS):
        want = limit - len(taken_rows)
        plan = allocate(candidates, want, policy) if want > 0 else []
        if not plan:
            break
        rows = list(
            conn.execute(
                _TAKE,
                {
                    "plan": json.dumps(
                        [{"job_id": str(c.job_id), "user_id": c.user_id, "n": n} for c, n in plan]
                    ),
                    "worker": worker,
                    "lease_s": lease_s,
                },
            )
        )
        got = Counter((r.job_id, r.user_id) for r in rows)
        taken_rows += rows
        for c in candidates:  # what this round took counts against the quotas of the next
            c.user_running += sum(n for (_, user), n in got.items() if user == c.user_id)
            c.job_running += sum(n for (job, _), n in got.items() if job == c.job_id)
            c.taken = 0
        for c, n in plan:
            have = got.get((c.job_id, c.user_id), 0)
            taken[(c.job_id, c.user_id)] = taken.get((c.job_id, c.user_id), 0) + have
            c.pending -= have
            if have < n:  # drained now, in backoff, or its next tasks locked by another claim
                settle.add((c.job_id, c.user_id))
                c.pending = 0
    streams.finish_claim(conn, taken, settle, held, policy.half_life_s)
    return taken_rows


def _count_running(conn: Connection, candidates: list[Candidate]) -> None:
    """Each candidate's user's and job's running tasks, for the quotas."""
    users = sorted({c.user_id for c in candidates})
    jobs = sorted({c.job_id for c in candidates})
    per_user: dict[str, int] = {}
    per_job: dict[uuid.UUID, int] = {}
    for row in conn.execute(_RUNNING, {"users": users, "jobs": jobs}):
        per_user[row.user_id] = per_user.get(row.user_id, 0) + int(row.n)
        per_job[row.job_id] = per_job.get(row.job_id, 0) + int(row.n)
    for c in candidates:
        c.user_running = per_user.get(c.user_id, 0)
        c.job_running = per_job.get(c.job_id, 0)
