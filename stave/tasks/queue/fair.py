"""Whose tasks go next: classes, fair share, aging and quotas, over the queue's streams.

A stream is one job's tasks of one user. Streams are ordered by
1. class: `interactive` before `standard` before `bulk`; a stream that has waited past the
   aging time (not claimed from since) counts as the next class up, so nothing starves;
2. its user's recent service over the user's weight (clips claimed, halving every half-life):
   users of one class split the fleet by their weights whatever order and size they came in;
3. the stream's own recent service: a user's jobs share that user's part;
4. age.
A claim of N tasks fills itself by this order a part at a time (`allocate`): each part goes to
the best stream, and its clips count at once against its user and job, so one claim may mix
users in their proportions. Quotas cap what a user, or a job, may have running; a stream over
its quota is passed over, never waited for. Pure Python: the caller reads the candidates and
takes what the plan says.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

from stave.infra.settings import Settings
from stave.models.generation import PRIORITIES

RANKS = {name: rank for rank, name in enumerate(PRIORITIES)}


@dataclass(frozen=True)
class QueuePolicy:
    half_life_s: float = 3600.0
    aging_s: float = 3600.0
    user_max_running: int = 0  # 0: no quota
    job_max_running: int = 0

    @classmethod
    def of(cls, settings: Settings) -> QueuePolicy:
        return cls(
            half_life_s=settings.fair_share_half_life_s,
            aging_s=settings.queue_aging_s,
            user_max_running=settings.user_max_running,
            job_max_running=settings.job_max_running,
        )


@dataclass
class Candidate:
    """A stream as a claim sees it: served figures already decayed to now."""

    job_id: uuid.UUID
    user_id: str
    priority: str
    pending: int
    waited_s: float  # since last claimed from (or queued)
    job_served: float
    user_served: float
    weight: float
    created_order: int  # its place by age among the candidates
    user_running: int = 0
    job_running: int = 0
    taken: int = field(default=0)

    @property
    def rank(self) -> int:
        """Its class's rank, one up once it has waited past the aging time."""
        return RANKS[self.priority]


def effective_rank(candidate: Candidate, policy: QueuePolicy) -> int:
    aged = policy.aging_s > 0 and candidate.waited_s >= policy.aging_s
    return max(0, candidate.rank - (1 if aged else 0))


def decayed(value: float, age_s: float, half_life_s: float) -> float:
    """`value` as of `age_s` ago, halved every `half_life_s` since."""
    if half_life_s <= 0:
        return 0.0
    return value * math.pow(0.5, max(0.0, age_s) / half_life_s)


def allocate(
    candidates: list[Candidate], limit: int, policy: QueuePolicy
) -> list[tuple[Candidate, int]]:
    """How many tasks to take from which streams, in order, for a claim of `limit`.

    Parts are at least an eighth of the claim, and a user's part runs until its share would
    pass the next user's of the same class: a claim is a few parts, not `limit` of them."""
    remaining = limit
    smallest = max(1, limit // 8)
    served = {c.user_id: c.user_served for c in candidates}
    running = {c.user_id: c.user_running for c in candidates}
    job_running = {c.job_id: c.job_running for c in candidates}
    open_ = [c for c in candidates if c.pending > 0]
    plan: dict[tuple[uuid.UUID, str], tuple[Candidate, int]] = {}

    def room(c: Candidate) -> int:
        limits = [c.pending - c.taken]
        if policy.user_max_running:
            limits.append(policy.user_max_running - running[c.user_id])
        if policy.job_max_running:
            limits.append(policy.job_max_running - job_running[c.job_id])
        return max(0, min(limits))

    def key(c: Candidate) -> tuple[int, float, float, int]:
        return (
            effective_rank(c, policy),
            served[c.user_id] / c.weight,
            c.job_served + c.taken,
            c.created_order,
        )

    while remaining > 0:
        open_ = [c for c in open_ if room(c) > 0]
        if not open_:
            break
        open_.sort(key=key)
        best = open_[0]
        share = served[best.user_id] / best.weight
        rivals = [c for c in open_[1:] if c.user_id != best.user_id and key(c)[0] == key(best)[0]]
        if rivals:
            # Up to where this user's share meets the next user's (in clips at its weight).
            gap = (served[rivals[0].user_id] / rivals[0].weight - share) * best.weight
            part = max(smallest, math.ceil(gap))
        else:
            part = remaining
        part = min(part, remaining, room(best))
        best.taken += part
        served[best.user_id] += part
        running[best.user_id] += part
        job_running[best.job_id] += part
        remaining -= part
        plan[(best.job_id, best.user_id)] = (best, best.taken)
    return list(plan.values())
