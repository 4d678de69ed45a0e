"""`stave run-pending [--follow]`: make what the queue holds, once or as a long-lived drain.

`--follow` is the warm worker: one process keeps the model (and Prefect's client, the gpu
slot's lookup, the index check) loaded and runs the `run-pending` flow each time work is due,
so a steady trickle does not pay a process start and a model load per run as a process
worker's flow runs do. Each pass is a flow run of its own on the configured Prefect API
(visible in the UI, with its summary and progress); between passes it asks the database every
`STAVE_FOLLOW_POLL_S` seconds whether a claim would find work. SIGTERM or Ctrl-C hands the
batch in flight back and exits.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import typer

from stave.cli.common import (
    JSON_HELP,
    engine,
    flow_summary,
    in_process_prefect,
    print_json,
    raise_if_clips_failed,
    settings,
)
from stave.cli.jobs import job_bar
from stave.infra import stop
from stave.infra.objectstore import make_object_store
from stave.models.base import parse_id
from stave.tasks.inference import check_generator
from stave.tasks.queue import due_now, job_state


def run_pending(
    job: str | None = typer.Option(None, "--job", help="Only this job's tasks."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many tasks."),
    follow: bool = typer.Option(
        False,
        "--follow",
        help="Stay up with the model loaded; run whenever work is due, until SIGTERM/Ctrl-C.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Generate whatever is queued (by `stave submit`, or left by a worker that died)."""
    current = settings()
    job_id = parse_id(job, "job") if job else None
    check_generator(current)
    make_object_store(current).check()
    if follow:
        _follow(job_id, limit, as_json)
        return
    waiting = job_state(engine(current), job_id).open
    if waiting == 0:
        if as_json:
            print_json({"job_id": job, "batches": 0, "pending": 0})
        else:
            typer.echo("nothing pending")
        return
    in_process_prefect(current)
    from stave.flows.generate import run_pending as run_pending_flow  # prefect

    with job_bar(job_id, min(waiting, limit or waiting)):
        summary = flow_summary(run_pending_flow(job_id=job_id, limit=limit, return_state=True))
    if as_json:
        print_json(summary)
    else:
        typer.echo(_line(summary))
    stop.check()  # a signal cut the run short: exit 130 / 143 after the summary
    raise_if_clips_failed(summary, "stave jobs, then stave job ID --status failed")


def _follow(job_id: Any, limit: int | None, as_json: bool) -> None:
    """Pass after pass until a signal: a failed pass is reported and the drain goes on (its
    clips are recorded and retried through the queue, as any run's are)."""
    current = settings()
    db = engine(current)
    in_process_prefect(current)
    from stave.flows.generate import run_pending as run_pending_flow  # prefect
    from stave.tasks.finishing import finishers

    finishers(current).start()  # importing while the drain waits: warm for the first batch

    typer.echo(
        f"following the queue{f' of job {job_id}' if job_id else ''}: "
        f"a run whenever work is due (polling every {current.follow_poll_s:g} s)",
        err=True,
    )
    while not stop.requested():
        if not due_now(db, job_id):
            stop.wait(current.follow_poll_s)
            continue
        summary = flow_summary(run_pending_flow(job_id=job_id, limit=limit, return_state=True))
        if as_json:
            typer.echo(json.dumps(summary, default=str))  # one line per run
        else:
            typer.echo(_line(summary) + (f"; {summary['failure']}" if summary["failure"] else ""))
    # A stop is how a follower ends (systemd, a rolling restart): exit 0 once handed back.
    signum = stop.signal_number()
    name = signal.Signals(signum).name if signum else "a signal"
    typer.echo(f"stopped by {name}: the batch in flight was finished or handed back", err=True)


def _line(summary: dict[str, Any]) -> str:
    return (
        f"processed {summary['batches']} batch(es): {summary['published_now']} published, "
        f"{summary['quarantined_now']} quarantined, {summary['failed_now']} failed, "
        f"{summary['retried_now']} to retry; {summary['pending']} still pending"
    )
