"""Where a job stands: its class, the tasks that would be claimed before its own, and when it
would be done at the fleet's recent pace.

Tasks ahead of a job: every pending task of a stream in a higher class (aging counted), plus,
in its own class, as many of each other user's tasks as that user's weight takes alongside
the job's (the fair share interleaves them), plus its own user's earlier streams. The pace is
the clips a second the drains updated in the last ten minutes made (`drain_run`). An estimate:
a new interactive job, or a change of weights, moves it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.tasks.queue.candidates import served_now
from stave.tasks.queue.fair import RANKS, QueuePolicy, decayed

PACE_WINDOW_S = 600.0


@dataclass
class Place:
    job_id: uuid.UUID
    priority: str
    paused: bool
    pending: int
    ahead: int | None  # None while paused
    eta_s: float | None  # None while paused, or with no recent pace

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id),
            "priority": self.priority,
            "paused": self.paused,
            "pending": self.pending,
            "ahead": self.ahead,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
        }


def fleet_pace(engine: Engine) -> float:
    """Clips a second the fleet made lately: the drains updated in the last ten minutes."""
    with engine.connect() as conn:
        pace = conn.execute(
            text(
                "SELECT coalesce(sum(clips / wall_s), 0) FROM drain_run "
                "WHERE wall_s > 0 AND updated_at > now() - make_interval(secs => :w)"
            ),
            {"w": PACE_WINDOW_S},
        ).scalar_one()
    return float(pace)


def places(
    engine: Engine, policy: QueuePolicy, jobs: Iterable[uuid.UUID] | None = None
) -> dict[uuid.UUID, Place]:
    """The places of `jobs` (default: every job with pending tasks) that have pending tasks:
    one pass over the queue's streams per job asked."""
    with engine.connect() as conn:
        rows = list(
            conn.execute(
                text(
                    """
                    SELECT q.job_id, q.user_id, q.priority, q.paused, q.pending,
                           extract(epoch FROM now() - q.waiting_since) AS waited_s,
                           q.served, extract(epoch FROM now() - q.served_at) AS served_age_s,
                           coalesce(u.weight, 1) AS weight, u.log_served, q.created_at
                    FROM queue_stream q LEFT JOIN user_share u ON u.user_id = q.user_id
                    WHERE q.pending > 0
                    """
                )
            )
        )
    pace = fleet_pace(engine)
    streams: list[dict[str, Any]] = []
    for r in rows:
        aged = policy.aging_s > 0 and float(r.waited_s) >= policy.aging_s
        streams.append(
            {
                "row": r,
                "rank": max(0, RANKS[r.priority] - (1 if aged else 0)),
                "share": served_now(r.log_served, policy.half_life_s) / float(r.weight),
                "served": decayed(float(r.served), float(r.served_age_s), policy.half_life_s),
            }
        )
    found: dict[uuid.UUID, Place] = {}
    queued = {s["row"].job_id for s in streams}
    for job_id in queued if jobs is None else queued & set(jobs):
        own = [s for s in streams if s["row"].job_id == job_id]
        first = own[0]["row"]
        pending = sum(int(s["row"].pending) for s in own)
        if first.paused:
            found[job_id] = Place(job_id, first.priority, True, pending, None, None)
            continue
        ahead = sum(_ahead(s, own, pending) for s in streams if s["row"].job_id != job_id)
        eta = (ahead + pending) / pace if pace > 0 else None
        found[job_id] = Place(job_id, first.priority, False, pending, ahead, eta)
    return found


def _ahead(other: dict[str, Any], own: list[dict[str, Any]], pending: int) -> int:
    """How many of `other`'s pending tasks go before the job's `pending` ones."""
    row = other["row"]
    if row.paused:
        return 0
    mine = min(own, key=lambda s: (s["rank"], s["share"], s["served"]))
    if other["rank"] != mine["rank"]:
        return int(row.pending) if other["rank"] < mine["rank"] else 0
    if row.user_id == mine["row"].user_id:  # the user's own jobs: by their service, then age
        before = (other["served"], row.created_at) < (mine["served"], mine["row"].created_at)
        return int(row.pending) if before else 0
    # Another user of the class: served alongside, in proportion to the weights.
    alongside = pending * float(row.weight) / float(mine["row"].weight)
    return int(min(int(row.pending), round(alongside)))
