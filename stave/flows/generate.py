"""Bulk generation: from a prompt file (or rows from the Prefect UI) to published clips.

`generate` checks and submits the rows (or takes a job already submitted), then drains the
job's queue (flows/drain.py) and puts the job's listening page and the Data Docs in the object
store, linked from the run's artifacts; `run_pending` drains whatever is queued (by `stave
submit`, or a job whose worker died). A run whose clips failed ends Failed (tasks/outcome.py).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from stave.flows import names
from stave.flows.drain import DrainStats, drain
from stave.flows.ending import run_state
from stave.flows.logs import run_logger
from stave.flows.steps import generation
from stave.infra.db import get_engine
from stave.infra.errors import InvalidInput, StaveError
from stave.infra.settings import get_settings
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
    """
    log = run_logger("stave.flows.generate")
    if job_id is not None:
        if file_key is not None or rows is not None:
            raise InvalidInput("give exactly one of file_key, rows or job_id")
        return _generate_job(job_id, run)
    submission = generation.submit_rows(file_key, rows, format, user_id, submitted_by)
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


def _generate_job(
    job_id: uuid.UUID, run: bool, *, created: bool = False, rejected: int = 0, **extra: Any
) -> Any:
    """Generate what a submitted job lacks (unless `run` is off); its summary, and its state."""
    stats = drain(job_id, wait_for_running=True) if run else None
    summary = job_summary(job_id, rejected=rejected)
    summary.update(created=created, **extra)
    if stats is not None:
        lap = time.perf_counter()
        summary["pages"] = _pages(job_id)
        stats.lap("pages and data docs", lap)
        summary["seconds"] = {k: round(v, 3) for k, v in stats.seconds.items()}
        summary["handed_back"] = stats.handed_back
    summary["failure"] = job_failure(
        get_engine(), job_id, get_settings().quarantine_fails_run_above
    )
    return _finish(summary, stats)


def _pages(job_id: uuid.UUID) -> dict[str, Any] | None:
    """The job's listening page and the Data Docs in the store, linked from the run's
    artifacts (off with STAVE_PUBLISH_PAGES=false). Pages are for people: a store that fails
    them is a warning, not the run's failure (its clips are its outcome). The Data Docs are
    built either way (locally, under the log folder)."""
    if not get_settings().publish_pages:
        generation.build_data_docs()
        return None
    try:
        pages = generation.publish_pages(job_id)
    except StaveError as err:
        run_logger("stave.flows.generate").warning("pages not published: %s", err)
        return None
    if pages.gallery:
        create_link_artifact(
            key=f"gallery-{job_id}",
            link=pages.gallery,
            link_text=f"Listening page: {pages.clips} clip(s) of job {job_id}",
            description="Players, spectrograms and each clip's nearest neighbours.",
        )
    if pages.data_docs:
        create_link_artifact(
            key="data-docs",
            link=pages.data_docs,
            link_text="Data Docs: the validation suite's results",
        )
    lines = [f"## Job {job_id}", ""]
    if pages.gallery:
        lines.append(f"- [Listening page]({pages.gallery}) ({pages.clips} clips)")
    if pages.data_docs:
        lines.append(f"- [Data Docs]({pages.data_docs}) (validation results)")
    lines += [f"- problem: {problem}" for problem in pages.problems[:10]]
    create_markdown_artifact(key=f"job-pages-{job_id}", markdown="\n".join(lines))
    return pages.to_dict()


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
    if stats.batches:
        generation.build_data_docs()
    summary = job_summary(job_id)
    summary.update(
        batches=stats.batches,
        published_now=stats.published,
        quarantined_now=stats.quarantined,
        failed_now=stats.failed,
        retried_now=stats.retried,
        handed_back_now=stats.handed_back,
    )
    this_run = RunOutcome(
        processed=stats.published + stats.quarantined + stats.failed,
        failed=dict(stats.failed_by_class),
        quarantined=stats.quarantined,
    )
    summary["failure"] = failure_message(this_run, get_settings().quarantine_fails_run_above)
    return _finish(summary, stats)
