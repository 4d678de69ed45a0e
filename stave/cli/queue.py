"""`stave jobs`, `stave job ID` (with its class, place and estimated time, and the operator's
controls: --set-priority, --pause, --resume, --cancel) and `stave share` (users' weights)."""

from __future__ import annotations

import getpass
from typing import Any

import typer

from stave.cli.common import JSON_HELP, engine, print_json, settings
from stave.models import Priority, TaskStatus
from stave.models.base import parse_id
from stave.tasks import queue
from stave.tasks.records import job_detail, list_jobs

share_app = typer.Typer(help="Users' weights in the fair share of the queue.", no_args_is_help=True)


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def jobs(
    limit: int = typer.Option(20, "--limit", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The latest jobs: class, task counts, and for queued ones the tasks ahead and an ETA."""
    current = settings()
    db = engine(current)
    rows = list_jobs(db, limit)
    places = queue.places(db, queue.QueuePolicy.of(current), [r["id"] for r in rows])
    for row in rows:
        place = places.get(row["id"])
        row["ahead"] = place.ahead if place else None
        row["eta_s"] = round(place.eta_s, 1) if place and place.eta_s is not None else None
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no jobs yet: stave generate FILE")
        return
    typer.echo(
        f"{'job':<36}  {'created':<19}  {'class':<11} {'rows':>5} {'pend':>5} {'pub':>5} "
        f"{'fail':>5} {'ahead':>6} {'eta':>7}  source"
    )
    for r in rows:
        kind = r["priority"] + ("*" if r["paused"] else "")
        typer.echo(
            f"{r['id']!s:<36}  {r['created_at']:%Y-%m-%d %H:%M:%S}  {kind:<11} "
            f"{r['total_rows']:>5} {r['pending'] + r['running']:>5} {r['published']:>5} "
            f"{r['failed']:>5} {_or_dash(r['ahead']):>6} {eta_text(r['eta_s']):>7}  "
            f"{r['source_uri'] or '(rows)'}"
        )
    if any(r["paused"] for r in rows):
        typer.echo("* paused: stave job ID --resume")


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def job(
    job_id: str = typer.Argument(..., help="Job id."),
    limit: int = typer.Option(20, "--limit", min=0, help="Tasks to list (0: none)."),
    status: TaskStatus | None = typer.Option(None, "--status", help="Only tasks in this status."),
    set_priority: Priority | None = typer.Option(
        None, "--set-priority", help="Move the job to this class (its next claims see it)."
    ),
    pause: bool = typer.Option(False, "--pause", help="Hold its pending tasks back."),
    resume: bool = typer.Option(False, "--resume", help="Let its pending tasks be claimed."),
    cancel: bool = typer.Option(
        False, "--cancel", help="End its pending tasks as cancelled (running ones finish)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """One job: class, counts per status, place in the queue and ETA, rejected rows, and its
    first tasks with their clips; or change its class, pause, resume or cancel it."""
    current = settings()
    db = engine(current)
    ident = parse_id(job_id, "job")
    said = control(db, ident, set_priority, pause, resume, cancel)
    detail = job_detail(db, ident, limit=limit, status=status.value if status else None)
    place = queue.places(db, queue.QueuePolicy.of(current), [ident]).get(ident)
    detail["place"] = place.to_dict() if place else None
    if as_json:
        print_json(detail)
        return
    if said:
        typer.echo(said)
    _print_job(detail, place)


def control(
    db: Any,
    job_id: Any,
    priority: Priority | None,
    pause: bool,
    resume: bool,
    cancel: bool,
) -> str | None:
    """The operator's change, done; what it did in a line (None: nothing asked)."""
    if sum((priority is not None, pause, resume, cancel)) > 1:
        raise typer.BadParameter("give one of --set-priority, --pause, --resume, --cancel")
    if priority is not None:
        queue.set_priority(db, job_id, priority.value)
        return f"job {job_id}: class {priority.value}"
    if pause:
        queue.pause(db, job_id)
        return f"job {job_id}: paused (running tasks finish; stave job {job_id} --resume)"
    if resume:
        queue.resume(db, job_id)
        return f"job {job_id}: resumed"
    if cancel:
        n = queue.cancel(db, job_id, by=getpass.getuser())
        return f"job {job_id}: {n} pending task(s) cancelled (running ones finish)"
    return None


def _print_job(detail: dict[str, Any], place: queue.Place | None) -> None:
    typer.echo(f"job {detail['id']}  created {detail['created_at']:%Y-%m-%d %H:%M:%S}")
    typer.echo(f"  class       {detail['priority']}" + ("  (paused)" if detail["paused"] else ""))
    if place is not None and place.ahead is not None:
        typer.echo(
            f"  queue       {place.ahead} task(s) ahead of its {place.pending} pending; "
            f"done in about {eta_text(place.eta_s)}"
            + ("" if place.eta_s is not None else " (no recent pace: no drain ran lately)")
        )
    typer.echo(
        f"  source      {detail['source_uri'] or '(rows)'}  sha256 {detail['source_sha256']}"
    )
    typer.echo(
        f"  rows        {detail['total_rows']} ({detail['accepted_rows']} accepted, "
        f"{detail['rejected_rows']} rejected)"
    )
    typer.echo(
        "  tasks       " + ", ".join(f"{k} {v}" for k, v in sorted(detail["counts"].items()))
    )
    gpu = detail.get("gpu")
    if gpu and gpu["gpu_busy"] is not None:
        typer.echo(
            f"  GPU busy    {gpu['gpu_busy']:.2f} (the model {gpu['model_s']:g} s of "
            f"{gpu['wall_s']:g} s over {gpu['runs']} run(s); near 0.2 the platform, not the "
            "GPU, is the limit)"
        )
    for r in detail["rejections"][:20]:
        typer.echo(f"  rejected    row {r['row']}, {r['field']}: {r['reason']}")
    for t in detail["tasks"]:
        where = t["object_key"] or (
            f"{t['error_class']}: {t['error_message']}" if t["error_class"] else ""
        )
        typer.echo(f"  {t['id']}  {t['status']:<11}  {where}")
    shown = detail["tasks_shown"]
    if shown["shown"] < shown["of"]:
        typer.echo(
            f"  … {shown['shown']} of {shown['of']} task(s) shown "
            "(--limit N, --status S, or --json)"
        )


@share_app.command("list")
def share_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Users with a weight or queued work: weight, clips served lately, tasks pending."""
    current = settings()
    rows = queue.shares(engine(current), current.fair_share_half_life_s)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no user has a weight or queued work (every weight is 1 by default)")
        return
    typer.echo(f"{'user':<32} {'weight':>7} {'served lately':>14} {'pending':>8}")
    for r in rows:
        typer.echo(f"{r['user_id']:<32} {r['weight']:>7g} {r['served']:>14g} {r['pending']:>8}")


@share_app.command("set")
def share_set(
    user: str = typer.Argument(..., help="The user id (as in the prompt files' user_id)."),
    weight: float = typer.Argument(..., help="Their weight: 2 gets twice a user of 1's part."),
) -> None:
    """Set a user's weight in the fair share (1 by default)."""
    queue.set_weight(engine(settings()), user, weight)
    typer.echo(f"user {user}: weight {weight:g}")
