"""`stave generate | submit | jobs | job | task | retry | regenerate | gc`."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import typer
from sqlalchemy.engine import Engine
from tqdm import tqdm

from stave.cli.common import (
    JSON_HELP,
    Device,
    FileFormat,
    PollingBar,
    engine,
    flow_summary,
    in_process_prefect,
    print_json,
    print_rejections,
    raise_if_clips_failed,
    settings,
)
from stave.infra import stop
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.models import Priority
from stave.models.base import parse_id
from stave.tasks import submission
from stave.tasks.gc import sweep
from stave.tasks.inference import check_generator
from stave.tasks.intake import SourceRows, read_file
from stave.tasks.queue import job_state, requeue_failed
from stave.tasks.records import job_detail, job_failure, job_summary, task_detail
from stave.tasks.regenerate import regenerate as remake

FILE_HELP = "Prompt file: .csv, .jsonl or .parquet (columns: prompt, and optional others)."
FORMAT_HELP = "The file's format when its name does not say."
SETTLED = ("published", "quarantined", "failed")


def _checked_source(
    current: Settings, file: Path, fmt: FileFormat | None, *, generating: bool
) -> SourceRows:
    """Everything that would make the command fail later, checked before anything is written:
    the file readable as its format, the generator's settings (when clips will be made here)
    and the object store reachable."""
    source = read_file(file, fmt.value if fmt else None)
    if generating:
        check_generator(current)
    make_object_store(current).check()
    return source


PRIORITY_HELP = "The job's class in the queue: interactive, standard or bulk."


def _submit(
    db: Engine, source: SourceRows, current: Settings, user: str | None, priority: Priority
) -> submission.Submission:
    """The file submitted, with a bar over its rows when it is more than one chunk."""
    with tqdm(
        total=source.count,
        unit="row",
        desc="submitting",
        leave=False,
        disable=source.count <= submission.CHUNK_ROWS,
    ) as bar:
        return submission.submit(
            db, source, current, user_id=user, progress=bar.update, priority=priority.value
        )


def job_bar(job_id: uuid.UUID | None, total: int) -> PollingBar:
    """A progress bar over a job's clips, fed from the database while the flow runs here."""

    def poll() -> tuple[int, int, dict[str, Any]] | None:
        counts = job_state(engine(settings()), job_id).counts
        if not counts:
            return None
        settled = {s: counts.get(s, 0) for s in SETTLED}
        return total, sum(settled.values()), settled

    return PollingBar(poll, desc="generating", unit="clip", total=total)


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    verb = "submitted" if summary.get("created", True) else "already submitted; nothing new"
    typer.echo(f"job {summary['job_id']} ({verb})")
    for name in ("published", "quarantined", "failed", "rejected", "pending"):
        typer.echo(f"  {name:<12}{summary.get(name, 0)}")
    typer.echo(f"  clips in    {summary['objects']}")
    pages = summary.get("pages") or {}
    if pages.get("gallery"):
        typer.echo(f"  listen at   {pages['gallery']}")
    typer.echo(f"  data docs   {pages.get('data_docs') or summary['data_docs']}")
    if summary.get("quarantined") or summary.get("failed"):
        typer.echo(f"  details     stave job {summary['job_id']}")


def _no_row_accepted(file: Path, queued: submission.Submission, as_json: bool) -> NoReturn:
    """Every row was rejected: the rejections (or the JSON summary), then one error line."""
    if as_json:
        print_json(queued.to_dict())
    print_rejections([r.to_dict() for r in queued.rejected], as_json, queued.rejected_count)
    raise InvalidInput(
        f"{file}: no row was accepted ({queued.rejected_count} rejected); nothing queued"
    )


def generate(
    file: Path = typer.Argument(..., help=FILE_HELP),
    fmt: FileFormat | None = typer.Option(None, "--format", help=FORMAT_HELP),
    user: str | None = typer.Option(None, "--user", help="User for rows without user_id."),
    priority: Priority = typer.Option(Priority.standard, "--priority", help=PRIORITY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Check, submit and generate a prompt file in this process; print a summary."""
    current = settings()
    source = _checked_source(current, file, fmt, generating=True)
    in_process_prefect(current)
    db = engine(current)
    # Submission happens outside the flow first so the progress bar knows the job; the flow's
    # own submission then finds every row already there and reuses the job.
    queued = _submit(db, source, current, user, priority)
    if queued.job_id is None:
        _no_row_accepted(file, queued, as_json)
    print_rejections([r.to_dict() for r in queued.rejected], as_json, queued.rejected_count)
    if job_state(db, queued.job_id).open == 0:
        # Nothing to make (a resubmission of finished work): report without starting Prefect.
        summary = job_summary(queued.job_id)
        summary["failure"] = job_failure(db, queued.job_id, current.quarantine_fails_run_above)
    else:
        from stave.flows.generate import generate as generate_flow  # prefect

        with job_bar(queued.job_id, queued.accepted + queued.already_submitted):
            state = generate_flow(job_id=queued.job_id, return_state=True)
            summary = flow_summary(state)
        _wait_for_pages(summary, as_json)
    summary["created"] = queued.created
    summary["rejected"] = queued.rejected_count
    summary["rejections"] = [r.to_dict() for r in queued.rejected]
    _print_summary(summary, as_json)
    if stop.requested():
        typer.echo(f"stave run-pending --job {queued.job_id} finishes the job", err=True)
    stop.check()  # a signal cut the run short: exit 130 / 143 after the summary
    raise_if_clips_failed(summary, f"stave job {queued.job_id} --status failed")


def _wait_for_pages(summary: dict[str, Any], as_json: bool) -> None:
    """The job's pages are built after its run, by a finishing process: wait for them before
    saying where they are (a problem with them is a warning; the clips are the outcome)."""
    from stave.tasks.finishing import wait_for_pages

    if summary.get("pages") and not as_json:
        typer.echo("building the job's listening page and Data Docs …", err=True)
    for built in wait_for_pages(timeout=PAGES_TIMEOUT_S):
        for problem in built.get("problems", [])[:5]:
            typer.echo(f"warning: pages: {problem}", err=True)


# The pages of the largest job (STAVE_GALLERY_MAX_CLIPS clips and their neighbours) take
# seconds; past this the command says where they will be and exits (the process's exit still
# waits for them).
PAGES_TIMEOUT_S = 300.0


def submit(
    file: Path = typer.Argument(..., help=FILE_HELP),
    fmt: FileFormat | None = typer.Option(None, "--format", help=FORMAT_HELP),
    user: str | None = typer.Option(None, "--user", help="User for rows without user_id."),
    priority: Priority = typer.Option(Priority.standard, "--priority", help=PRIORITY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check and queue a prompt file without generating; print the job id."""
    current = settings()
    source = _checked_source(current, file, fmt, generating=False)
    queued = _submit(engine(current), source, current, user, priority)
    if queued.job_id is None:
        _no_row_accepted(file, queued, as_json)
    if as_json:
        print_json(queued.to_dict())
        return
    print_rejections([r.to_dict() for r in queued.rejected], False, queued.rejected_count)
    state = "queued" if queued.created else "already submitted; nothing new"
    typer.echo(
        f"job {queued.job_id} {state}: {queued.accepted} task(s) queued, "
        f"{queued.rejected_count} row(s) rejected"
    )


def task(
    task_id: str = typer.Argument(..., help="Task id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """One task: parameters, provenance, its clip, its events and its prompt's history."""
    detail = task_detail(engine(settings()), task_id)
    if as_json:
        print_json(detail)
        return
    typer.echo(f"task {detail['id']}  {detail['status']}  (job {detail['job_id']})")
    typer.echo(f"  user        {detail['user_id']}")
    typer.echo(f"  prompt      {detail['prompt']}")
    typer.echo(f"  parameters  {detail['parameters']}")
    typer.echo(f"  attempts    {detail['attempts']} of {detail['max_attempts']}")
    if detail["error_class"]:
        typer.echo(f"  error       {detail['error_class']}: {detail['error_message']}")
    if detail.get("model_version"):
        mv = detail["model_version"]
        typer.echo(f"  model       {mv['name']} {mv['version']} (sha256 {mv['checkpoint_sha256']})")
    prov = detail["provenance"]
    if prov:
        typer.echo(
            f"  made on     {prov['device']} {prov['dtype']}, seed {prov['actual_seeds'][0]}, "
            f"code {prov['code_version']}"
        )
    if detail["asset"]:
        a = detail["asset"]
        typer.echo(
            f"  clip        {a['object_key']}  {a['duration_s']:.2f} s  "
            f"{a['loudness_lufs']:.1f} LUFS  peak {a['peak_dbfs']:.1f} dBFS  sha256 {a['sha256']}"
        )
    for depth, rev in enumerate(detail["prompt_history"]):
        typer.echo(f"  revision {depth}  {rev['created_at']:%Y-%m-%d %H:%M}  {rev['prompt']}")
    for e in detail["events"]:
        typer.echo(
            f"  {e['created_at']:%Y-%m-%d %H:%M:%S}  {e['from_status'] or '-'} -> {e['to_status']}"
        )


def retry(
    job_id: str = typer.Argument(..., help="Job id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Queue a job's failed tasks again, with fresh attempts (then `stave run-pending`)."""
    db = engine(settings())
    detail = job_detail(db, job_id, limit=0)  # says "no job" for an unknown id
    count = requeue_failed(db, parse_id(detail["id"], "job"), by=os.environ.get("USER", "cli"))
    if as_json:
        print_json({"job_id": str(detail["id"]), "requeued": count})
        return
    typer.echo(f"re-queued {count} failed task(s) of job {detail['id']}; run: stave run-pending")


def regenerate(
    task_id: str = typer.Argument(..., help="Task id of a published or quarantined clip."),
    verify: bool = typer.Option(False, "--verify", help="Exit 1 unless the bytes match."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the FLAC here."),
    device: Device | None = typer.Option(None, "--device", help="Default: the recorded device."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Make a clip again from its record; with --verify, check it is byte-identical."""
    result = remake(engine(settings()), task_id, device=device.value if device else None)
    if output is not None:
        output.write_bytes(result.data)
    if as_json:
        print_json(result.to_dict())
    elif result.matches:
        typer.echo(
            f"task {result.task_id}: regenerated {result.size} bytes, sha256 {result.sha256}"
        )
        typer.echo("identical to the published clip")
    else:
        typer.echo(
            f"task {result.task_id}: regenerated sha256 {result.sha256} differs from the record's "
            f"{result.recorded_sha256} (made on {result.recorded_device}, now {result.device})"
        )
    if verify and not result.matches:
        raise typer.Exit(1)


def gc(
    delete: bool = typer.Option(False, "--delete", help="Remove the orphans (default: list)."),
    grace_minutes: int = typer.Option(60, "--grace-minutes", min=0, help="Skip younger objects."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Find (and with --delete remove) audio objects that no record points to."""
    # Listening pages past STAVE_GALLERY_KEEP_DAYS go too (a filesystem store has no rules).
    current = settings()
    result = sweep(
        engine(current),
        make_object_store(current),
        env_name=current.env,
        delete=delete,
        grace=timedelta(minutes=grace_minutes),
        pages_kept=timedelta(days=current.gallery_keep_days),
    )
    if as_json:
        print_json(result.__dict__)
        return
    action = "deleted" if delete else "would delete (dry run; --delete to remove)"
    typer.echo(
        f"scanned {result.scanned} object(s): {len(result.orphans)} orphan(s), "
        f"{result.orphan_bytes} bytes, {action}; {result.too_young} too young to judge"
    )
    if result.expired_pages:
        typer.echo(
            f"{len(result.expired_pages)} listening-page object(s) older than "
            f"{current.gallery_keep_days} days (STAVE_GALLERY_KEEP_DAYS), "
            f"{result.expired_page_bytes} bytes, {action}"
        )
    for key in result.orphans[:20]:
        typer.echo(f"  {key}")
