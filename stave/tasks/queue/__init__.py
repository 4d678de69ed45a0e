"""The generation queue in PostgreSQL: claims with SKIP LOCKED and a lease, shared fairly.

- `claim.py`: a batch claimed in one transaction: expired leases handled, the streams whose
  tasks go next chosen, their oldest pending tasks taken and leased;
- `fair.py`: the order (classes, aging, fair share by weight, quotas) and a claim's plan;
- `streams.py`: the small table of work that waits, kept in step with the tasks;
- `settle.py`: failures (retries with backoff), hand-backs, re-queues;
- `control.py`: a job's class, pause, resume, cancel; users' weights;
- `where.py`: a job's place and its estimated time;
- `state.py`: counts, and when a claim next finds work.
Every write after a claim is fenced on `lease_owner = worker AND status = 'running'`, so a
worker whose lease expired and whose task was claimed again cannot overwrite the new holder.
"""

from stave.tasks.queue.claim import ClaimedTask, claim
from stave.tasks.queue.control import (
    cancel,
    check_priority,
    pause,
    resume,
    set_priority,
    set_weight,
    shares,
)
from stave.tasks.queue.fair import QueuePolicy
from stave.tasks.queue.settle import RETRYABLE, fail, release, requeue_failed
from stave.tasks.queue.state import QueueState, due_now, job_state, seconds_until
from stave.tasks.queue.streams import enqueue_job
from stave.tasks.queue.where import Place, fleet_pace, places

__all__ = [
    "RETRYABLE",
    "ClaimedTask",
    "Place",
    "QueuePolicy",
    "QueueState",
    "cancel",
    "check_priority",
    "claim",
    "due_now",
    "enqueue_job",
    "fail",
    "fleet_pace",
    "job_state",
    "pause",
    "places",
    "release",
    "requeue_failed",
    "resume",
    "seconds_until",
    "set_priority",
    "set_weight",
    "shares",
]
