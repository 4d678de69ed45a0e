"""The queue's streams kept in step with the tasks: every change of a task to or from
`pending` adjusts its stream's count in the same transaction.

A stream row exists while its job has pending or running tasks for its user: submission
creates it, a task coming back to `pending` (a retry, a hand-back, an expired lease, a
re-queue) recreates it if a claim removed it meanwhile, and a claim removes one it finds
with neither. Its `due_at` says when it next has claimable work (NULL: now).
"""

from __future__ import annotations

import json
import uuid

from sqlalchemy import text
from sqlalchemy.engine import Connection

# Tasks that became pending (by id), counted into their streams; a stream's `due_at` moves to
# the earliest of its own and theirs (NULL, now, wins).
_ADD_PENDING = text(
    """
    INSERT INTO queue_stream (job_id, user_id, priority, paused, pending, due_at, user_key,
                              served, served_at, waiting_since, created_at)
    SELECT t.job_id, t.user_id, j.priority, j.paused, count(*),
           CASE WHEN bool_or(t.available_at IS NULL) THEN NULL ELSE min(t.available_at) END,
           coalesce(min(u.log_served - ln(u.weight) / ln(2)), '-Infinity'),
           0, now(), now(), now()
    FROM generation_task t JOIN generation_job j ON j.id = t.job_id
    LEFT JOIN user_share u ON u.user_id = t.user_id
    WHERE t.id = ANY(:ids) AND t.status = 'pending'
    GROUP BY t.job_id, t.user_id, j.priority, j.paused
    ORDER BY t.job_id, t.user_id
    ON CONFLICT (job_id, user_id) DO UPDATE SET
        pending = queue_stream.pending + EXCLUDED.pending,
        due_at = CASE WHEN queue_stream.due_at IS NULL OR EXCLUDED.due_at IS NULL THEN NULL
                      ELSE least(queue_stream.due_at, EXCLUDED.due_at) END
    """
)

_ENQUEUE_JOB = text(
    """
    INSERT INTO queue_stream (job_id, user_id, priority, paused, pending, user_key, served,
                              served_at, waiting_since, created_at)
    SELECT t.job_id, t.user_id, :priority, false, count(*),
           coalesce(min(u.log_served - ln(u.weight) / ln(2)), '-Infinity'), 0, now(), now(),
           now()
    FROM generation_task t LEFT JOIN user_share u ON u.user_id = t.user_id
    WHERE t.job_id = :job AND t.status = 'pending'
    GROUP BY t.job_id, t.user_id
    ON CONFLICT (job_id, user_id) DO UPDATE SET pending = EXCLUDED.pending
    """
)

# After a claim: each user charged with the clips taken for them, in log2 at the epoch's
# scale (`user_share.log_served`: n clips at time T add 2^(T / half-life) n, so no row is ever
# brought up to date to compare; users in key order, so concurrent claims lock them in one
# order); then, for every stream the claim held of a charged user, its pending count less what
# was taken from it (`counted`: 0 for a stream recounted after the take), its service (decayed
# to now, plus the clips taken), when it was last served, and its copy of the user's share.
_SERVED = text(
    """
    WITH now_h AS (SELECT extract(epoch FROM now()) / :half_life AS t),
    charged AS (
        INSERT INTO user_share (user_id, weight, log_served, created_at)
        SELECT c.user_id, 1, ln(c.n::float8) / ln(2) + now_h.t, now()
        FROM jsonb_to_recordset(CAST(:users AS jsonb)) AS c(user_id text, n int), now_h
        ORDER BY c.user_id
        ON CONFLICT (user_id) DO UPDATE SET log_served = CASE
            WHEN user_share.log_served IS NULL
              OR user_share.log_served - (SELECT t FROM now_h) < -1000 THEN EXCLUDED.log_served
            ELSE ln(power(2::float8, user_share.log_served - (SELECT t FROM now_h))
                    + power(2::float8, EXCLUDED.log_served - (SELECT t FROM now_h))) / ln(2)
                 + (SELECT t FROM now_h)
            END
        RETURNING user_id, weight, log_served
    ), x AS (
        SELECT * FROM jsonb_to_recordset(CAST(:streams AS jsonb))
            AS x(job_id uuid, user_id text, n int, counted int)
    )
    UPDATE queue_stream q
    SET pending = greatest(q.pending - x.counted, 0),
        served = CASE WHEN x.n > 0 THEN q.served * power(2::float8, greatest(-1000,
                     -extract(epoch FROM now() - q.served_at) / :half_life)) + x.n
                 ELSE q.served END,
        served_at = CASE WHEN x.n > 0 THEN now() ELSE q.served_at END,
        waiting_since = CASE WHEN x.n > 0 THEN now() ELSE q.waiting_since END,
        user_key = charged.log_served - ln(charged.weight) / ln(2)
    FROM x JOIN charged ON charged.user_id = x.user_id
    WHERE q.job_id = x.job_id AND q.user_id = x.user_id
    """
)

# A stream a claim found without claimable work: its count made exact, and either removed
# (nothing pending or running) or given the time its next task is due (a backoff's end, a
# lease's expiry). A stream whose pending tasks are only locked by another claim stays due.
_SETTLE_EMPTY = text(
    """
    WITH facts AS (
        SELECT
            (SELECT count(*) FROM generation_task
             WHERE job_id = :job AND user_id = :user AND status = 'pending') AS pending,
            (SELECT bool_or(available_at IS NULL OR available_at <= now())
             FROM generation_task
             WHERE job_id = :job AND user_id = :user AND status = 'pending') AS due_now,
            (SELECT min(available_at) FROM generation_task
             WHERE job_id = :job AND user_id = :user AND status = 'pending') AS next_retry,
            (SELECT min(lease_expires_at) FROM generation_task
             WHERE job_id = :job AND user_id = :user AND status = 'running') AS next_lease
    ), gone AS (
        DELETE FROM queue_stream q USING facts
        WHERE q.job_id = :job AND q.user_id = :user AND facts.pending = 0
          AND facts.next_lease IS NULL
        RETURNING q.job_id
    )
    , kept AS (
        UPDATE queue_stream q SET
            pending = facts.pending,
            due_at = CASE WHEN facts.due_now THEN NULL
                          ELSE least(facts.next_retry, facts.next_lease) END
        FROM facts
        WHERE q.job_id = :job AND q.user_id = :user AND NOT EXISTS (SELECT 1 FROM gone)
    )
    SELECT pending, coalesce(due_now, false) AS due_now FROM facts
    """
)


# A stream's claimable-now count, read without locking it (a claim decides with it whether to
# take from the stream; the stream's row is written at the claim's end).
_CLAIMABLE = text(
    """
    SELECT count(*) FROM generation_task
    WHERE job_id = :job AND user_id = :user AND status = 'pending'
      AND (available_at IS NULL OR available_at <= now())
    """
)


def add_pending(conn: Connection, task_ids: list[uuid.UUID]) -> None:
    """Count tasks that just became pending into their streams (creating any missing)."""
    if task_ids:
        conn.execute(_ADD_PENDING, {"ids": task_ids})


def enqueue_job(conn: Connection, job_id: uuid.UUID, priority: str) -> None:
    """A submitted job's pending tasks as its streams, one per user, in `priority`."""
    conn.execute(_ENQUEUE_JOB, {"job": job_id, "priority": priority})


def claimable(conn: Connection, job_id: uuid.UUID, user_id: str) -> int:
    """How many of a stream's tasks are pending and due now (locked ones included)."""
    return int(conn.execute(_CLAIMABLE, {"job": job_id, "user": user_id}).scalar_one())


def finish_claim(
    conn: Connection,
    taken: dict[tuple[uuid.UUID, str], int],
    settle: set[tuple[uuid.UUID, str]],
    held: set[tuple[uuid.UUID, str]],
    half_life_s: float,
) -> None:
    """A claim's writes to the streams it `held` (locked since it chose them), at its end:
    those in `settle` (found short of claimable work) recounted, removed or given the time
    they are next due; each user charged with what was taken for them; then every held stream
    of a charged user: its count, service and copy of the user's share."""
    for job_id, user_id in sorted(settle, key=lambda k: (str(k[0]), k[1])):
        conn.execute(_SETTLE_EMPTY, {"job": job_id, "user": user_id})
    charged: dict[str, int] = {}
    for (_, user), n in taken.items():
        if n:
            charged[user] = charged.get(user, 0) + n
    if not charged:
        return
    users = [{"user_id": u, "n": n} for u, n in sorted(charged.items())]
    rows = [
        {
            "job_id": str(job),
            "user_id": user,
            "n": taken.get((job, user), 0),
            "counted": 0 if (job, user) in settle else taken.get((job, user), 0),
        }
        for job, user in sorted(held | set(taken), key=lambda k: (str(k[0]), k[1]))
        if user in charged
    ]
    conn.execute(
        _SERVED,
        {
            "users": json.dumps(users),
            "streams": json.dumps(rows),
            "half_life": max(half_life_s, 1e-9),
        },
    )
