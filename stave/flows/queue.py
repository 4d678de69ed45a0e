"""Operators' hands on the queue from the Prefect UI: a job's class, pause, resume, cancel.

The same calls as `stave job ID --set-priority / --pause / --resume / --cancel`; the run's
summary artifact shows the job's place in the queue afterwards.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_table_artifact

from stave.flows import names
from stave.flows.logs import run_logger
from stave.infra.db import get_engine
from stave.infra.errors import InvalidInput
from stave.infra.settings import get_settings
from stave.tasks import queue


@flow(name="job-control", log_prints=True, flow_run_name=names.job_control)
def job_control(
    job_id: uuid.UUID,
    action: Literal["pause", "resume", "cancel", "set-priority"],
    priority: Literal["interactive", "standard", "bulk"] | None = None,
) -> dict[str, Any]:
    """Change a queued job: its class, or pause, resume or cancel its pending tasks.

    Args:
        job_id: The job (as `stave jobs` lists it).
        action: pause (its pending tasks are held back; running ones finish), resume,
            cancel (its pending tasks end as cancelled), or set-priority.
        priority: With set-priority: interactive, standard or bulk.
    """
    engine = get_engine()
    done: dict[str, Any] = {"job_id": str(job_id), "action": action}
    if action == "set-priority":
        if priority is None:
            raise InvalidInput("set-priority needs priority: interactive, standard or bulk")
        queue.set_priority(engine, job_id, priority)
        done["priority"] = priority
    elif action == "pause":
        queue.pause(engine, job_id)
    elif action == "resume":
        queue.resume(engine, job_id)
    else:
        done["cancelled"] = queue.cancel(engine, job_id, by="prefect-ui")
    place = queue.places(engine, queue.QueuePolicy.of(get_settings()), [job_id]).get(job_id)
    done["place"] = place.to_dict() if place else None
    run_logger("stave.flows.queue").info("job %s: %s", job_id, done)
    create_table_artifact(
        table=[{"measure": k, "value": str(v)} for k, v in done.items()],
        key=f"job-control-{job_id}",
        description=f"job {job_id}: {action}",
    )
    return done
