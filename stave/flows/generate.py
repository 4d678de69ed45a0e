"""Bulk generation: from a prompt file (or rows from the Prefect UI) to published clips.

`generate` checks and submits the rows (or takes a job already submitted), then drains the
job's queue (flows/drain.py). The job's listening page and the Data Docs are then built and put
in the object store by a finishing process, after the run: the run that holds the GPU ends when
its last batch is published, its artifacts already linking where the pages go (the process
waits for them before it exits). `run_pending` drains whatever is queued (by `stave submit`,
or a job whose worker died). A run whose clips failed ends Failed (tasks/outcome.py).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.context import FlowRunContext

from stave.flows import names
from stave.flows.drain import drain
from stave.flows.ending import run_state
from stave.flows.logs import run_logger
from stave.flows.steps import generation
from stave.flows.steps.progress import DrainStats
from stave.infra import stop
from stave.infra.db import get_engine
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.infra.settings import get_settings
from stave.tasks import finishing, queue, sites
from stave.tasks.intake import PromptRow
from stave.tasks.outcome import RunOutcome, failure_message
from stave.tasks.records import job_failure, job_summary


def _summary_artifact(summary: dict[str, Any], stats: DrainStats | None) -> None:
    rows = [{"measure": k, "value": str(v)} for k, v in summary.items()]
    if stats is not None:
        rows += [
            {"measure": "batches this run", "value": str(stats.batches)},
            {"measure": "retried this run", "value": str(stats.retried)},
        ]
        rows += [{"measure": f"errors: {k}", "value": str(v)} for k, v in stats.errors.items()]
        rows += [
            {"measure": f"seconds: {k}", "value": f"{v:.2f}"} for k, v in stats.seconds.items()
        ]
        if stats.gpu_busy is not None:
            rows.append(
                {"measure": "GPU busy (model time / run)", "value": f"{stats.gpu_busy:.2f}"}
            )
    key = f"generation-summary-{summary['job_id']}" if summary["job_id"] else "generation-summary"
    create_table_artifact(table=rows, key=key, description="bulk generation summary")


@flow(name="generate", log_prints=True, flow_run_name=names.generate)
def generate(
    file_key: str | None = None,
    rows: list[PromptRow] | None = None,
    format: Literal["csv", "jsonl", "parquet"] | None = None,
    user_id: str | None = None,
    submitted_by: str | None = None,
    run: bool = True,
    job_id: uuid.UUID | None = None,
    priority: Literal["interactive", "standard", "bulk"] | None = None,
) -> Any:  # the summary, or a Failed state carrying it
    """Check and submit a prompt file (CSV, JSONL, Parquet) or rows, then generate the clips.

    Rejected rows of a file are listed in the job record and a table artifact; they do not
    stop the others. Re-submitting the same file (or rows) creates nothing new and reports the
    job. Give one of file_key, rows or job_id.

    Args:
        file_key: Key of a prompt file in the object store, as `stave prompts upload` prints
            it (e.g. prod/prompts/3f2a….csv).
        rows: Or the prompts themselves, one clip each (the same fields and limits as a
            prompt file's columns).
        format: The file's format when its key does not say (csv, jsonl, parquet).
        user_id: The user the clips belong to (default: STAVE_DEFAULT_USER).
        submitted_by: Who asked, for the job record.
        run: False only queues the tasks (the generation drain deployment makes them).
        job_id: Or a job already submitted (`stave submit`): generate its clips now.
        priority: The job's class in the queue: interactive, standard or bulk (default: bulk
            for a scheduled run, standard for one started by hand); with job_id, its new class.
    """
    log = run_logger("stave.flows.generate")
    if job_id is not None:
        if file_key is not None or rows is not None:
            raise InvalidInput("give exactly one of file_key, rows or job_id")
        if priority is not None:
            queue.set_priority(get_engine(), job_id, priority)
        return _generate_job(job_id, run)
    submission = generation.submit_rows(
        file_key, rows, format, user_id, submitted_by, priority or _default_priority()
    )
    if submission.rejected:
        create_table_artifact(
            table=[r.to_dict() for r in submission.rejected],
            key=f"rejected-rows-{submission.job_id}" if submission.job_id else "rejected-rows",
            description=f"{submission.rejected_count} rejected row(s) of {submission.total}"
            + (
                f" (the first {len(submission.rejected)} listed)"
                if submission.rejected_count > len(submission.rejected)
                else ""
            ),
        )
        for rejection in submission.rejected[:20]:
            log.warning("rejected %s", rejection)
    if submission.job_id is None:
        # The run fails, naming the first reason; the rejections are in the artifact above.
        raise InvalidInput(
            f"no row was accepted ({submission.rejected_count} rejected; first: "
            f"{submission.rejected[0]}); nothing queued"
        )
    if not submission.created:
        log.info("already submitted: job %s", submission.job_id)
    return _generate_job(
        submission.job_id,
        run,
        created=submission.created,
        rejected=submission.rejected_count,
        total_rows=submission.total,
    )


def _default_priority() -> str:
    """A scheduled run's jobs are bulk; a run someone started (the UI, the API) standard."""
    context = FlowRunContext.get()
    scheduled = bool(context and context.flow_run and context.flow_run.auto_scheduled)
    return "bulk" if scheduled else "standard"


def _generate_job(
    job_id: uuid.UUID, run: bool, *, created: bool = False, rejected: int = 0, **extra: Any
) -> Any:
    """Generate what a submitted job lacks (unless `run` is off); its summary, and its state."""
    stats = drain(job_id, wait_for_running=True) if run else None
    summary = job_summary(job_id, rejected=rejected)
    summary.update(created=created, **extra)
    if stats is not None:
        # A stopped run builds no pages: the run that finishes the job does.
        summary["pages"] = (
            None
            if stop.requested()
            else _pages(job_id, published=summary["published"], quarantined=summary["quarantined"])
        )
        summary["seconds"] = {k: round(v, 3) for k, v in stats.seconds.items()}
        summary["handed_back"] = stats.handed_back
        summary["gpu_busy"] = stats.gpu_busy
        summary["cpu_s"] = stats.cpu_s()
    summary["failure"] = job_failure(
        get_engine(), job_id, get_settings().quarantine_fails_run_above
    )
    return _finish(summary, stats)


def _pages(job_id: uuid.UUID, *, published: int, quarantined: int) -> dict[str, Any] | None:
    """The job's listening page and the Data Docs, handed to a finishing process to build and
    put in the store (the Data Docs only built, locally, with STAVE_PUBLISH_PAGES=false); the
    run's artifacts link where they go. Pages are for people: one that fails is a warning in
    the log, not the run's failure (its clips are its outcome). A job none of whose clips was
    validated has no pages."""
    if published + quarantined == 0:
        return None
    settings = get_settings()
    pool = finishing.finishers(settings)
    gallery = published > 0
    pool.submit(
        finishing.PagesRequest(job_id if gallery else None, settings, settings.publish_pages)
    )
    if not settings.publish_pages:
        return None
    store = make_object_store(settings)
    listening = sites.gallery_link(store, settings, job_id) if gallery else None
    docs = sites.data_docs_link(store, settings)
    clips = min(published, settings.gallery_max_clips)
    lines = [f"## Job {job_id}", ""]
    if listening:
        create_link_artifact(
            key=f"gallery-{job_id}",
            link=listening,
            link_text=f"Listening page: {clips} clip(s) of job {job_id}",
            description="Players, spectrograms and each clip's nearest neighbours.",
        )
        lines.append(f"- [Listening page]({listening}) ({clips} clips)")
    create_link_artifact(
        key="data-docs", link=docs, link_text="Data Docs: the validation suite's results"
    )
    lines.append(f"- [Data Docs]({docs}) (validation results)")
    create_markdown_artifact(key=f"job-pages-{job_id}", markdown="\n".join(lines))
    return {"gallery": listening, "data_docs": docs, "clips": clips, "problems": []}


def _finish(summary: dict[str, Any], stats: DrainStats | None) -> Any:
    """The summary artifact, then the run's state: Failed when its clips failed (the summary
    is the state's data either way, for the CLI and the API)."""
    _summary_artifact(summary, stats)
    handed_back = stats.handed_back if stats else 0
    return run_state(summary, f"{handed_back} clip(s) handed back to the queue")


@flow(name="run-pending", log_prints=True, flow_run_name=names.drain)
def run_pending(job_id: uuid.UUID | None = None, limit: int | None = None) -> Any:
    """Process queued tasks (all jobs, or one) until none is left to claim.

    Args:
        job_id: Only this job's tasks (default: every job's).
        limit: At most this many clips this run (default: all that are due).
    """
    stats = drain(job_id, wait_for_running=False, limit=limit)
    settings = get_settings()
    if stats.batches and not stop.requested():  # the Data Docs of what was validated
        finishing.finishers(settings).submit(finishing.PagesRequest(None, settings, False))
    summary = job_summary(job_id)
    summary.update(
        batches=stats.batches,
        published_now=stats.published,
        quarantined_now=stats.quarantined,
        failed_now=stats.failed,
        retried_now=stats.retried,
        handed_back_now=stats.handed_back,
        gpu_busy=stats.gpu_busy,
        cpu_s=stats.cpu_s(),
    )
    this_run = RunOutcome(
        processed=stats.published + stats.quarantined + stats.failed,
        failed=dict(stats.failed_by_class),
        quarantined=stats.quarantined,
    )
    summary["failure"] = failure_message(this_run, get_settings().quarantine_fails_run_above)
    return _finish(summary, stats)
