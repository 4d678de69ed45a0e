"""Reading jobs and tasks back for operators: status, counts, lineage, provenance."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.db import get_engine
from stave.infra.errors import NotFound
from stave.infra.settings import get_settings
from stave.models.base import parse_id
from stave.tasks import drain_runs
from stave.tasks.outcome import RunOutcome, failure_message
from stave.tasks.queue import job_state


def list_jobs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """
                SELECT j.id, j.created_at, j.submitted_by, j.source_uri, j.total_rows,
                       j.accepted_rows, j.rejected_rows, j.priority, j.paused,
                       count(t.id) FILTER (WHERE t.status = 'pending') AS pending,
                       count(t.id) FILTER (WHERE t.status = 'running') AS running,
                       count(t.id) FILTER (WHERE t.status = 'published') AS published,
                       count(t.id) FILTER (WHERE t.status = 'quarantined') AS quarantined,
                       count(t.id) FILTER (WHERE t.status = 'failed') AS failed
                FROM (SELECT * FROM generation_job ORDER BY created_at DESC LIMIT :limit) j
                LEFT JOIN generation_task t ON t.job_id = j.id
                GROUP BY j.id, j.created_at, j.submitted_by, j.source_uri, j.total_rows,
                         j.accepted_rows, j.rejected_rows, j.priority, j.paused
                ORDER BY j.created_at DESC
                """
            ),
            {"limit": limit},
        ).mappings()
        return [dict(r) for r in rows]


def job_detail(
    engine: Engine,
    job_id: str | uuid.UUID,
    *,
    limit: int | None = 20,
    status: str | None = None,
) -> dict[str, Any]:
    """A job with its counts per status and its first `limit` tasks (all with None), only
    those in `status` when given: a 100,000-task job is a summary, not 37 MB."""
    ident = parse_id(job_id, "job")
    with engine.connect() as conn:
        job = (
            conn.execute(text("SELECT * FROM generation_job WHERE id = :id"), {"id": ident})
            .mappings()
            .one_or_none()
        )
        if job is None:
            raise NotFound(f"no job {ident}")
        counts = {
            row.status: int(row.n)
            for row in conn.execute(
                text(
                    "SELECT status, count(*) AS n FROM generation_task WHERE job_id = :id "
                    "GROUP BY status"
                ),
                {"id": ident},
            )
        }
        tasks = conn.execute(
            text(
                """
                SELECT t.id, t.status, t.user_id, t.prompt, t.attempts, t.error_class,
                       t.error_message, t.parameters->>'seed' AS seed, a.id AS asset_id,
                       a.object_key, a.duration_s, a.loudness_lufs
                FROM generation_task t LEFT JOIN audio_asset a ON a.task_id = t.id
                WHERE t.job_id = :id AND (CAST(:status AS text) IS NULL OR t.status = :status)
                ORDER BY t.created_at, t.id LIMIT :limit
                """
            ),
            {"id": ident, "status": status, "limit": limit},
        ).mappings()
        detail = dict(job)
        detail["tasks"] = [dict(t) for t in tasks]
        detail["gpu"] = drain_runs.for_job(conn, ident)
    detail["counts"] = counts
    shown_of = counts.get(status, 0) if status else sum(counts.values())
    detail["tasks_shown"] = {"shown": len(detail["tasks"]), "of": shown_of, "status": status}
    return detail


def task_detail(engine: Engine, task_id: str | uuid.UUID) -> dict[str, Any]:
    """A task with its asset, model version, events and its prompt's revision chain."""
    ident = parse_id(task_id, "task")
    with engine.connect() as conn:
        task = (
            conn.execute(text("SELECT * FROM generation_task WHERE id = :id"), {"id": ident})
            .mappings()
            .one_or_none()
        )
        if task is None:
            raise NotFound(f"no task {ident}")
        detail = dict(task)
        asset = (
            conn.execute(text("SELECT * FROM audio_asset WHERE task_id = :id"), {"id": ident})
            .mappings()
            .one_or_none()
        )
        detail["asset"] = dict(asset) if asset else None
        if task["model_version_id"]:
            detail["model_version"] = dict(
                conn.execute(
                    text(
                        "SELECT id, name, version, checkpoint_uri, checkpoint_sha256, code_version "
                        "FROM model_version WHERE id = :id"
                    ),
                    {"id": task["model_version_id"]},
                )
                .mappings()
                .one()
            )
        detail["events"] = [
            dict(e)
            for e in conn.execute(
                text(
                    "SELECT created_at, from_status, to_status, detail FROM task_event "
                    "WHERE task_id = :id ORDER BY id"
                ),
                {"id": ident},
            ).mappings()
        ]
        detail["prompt_history"] = [
            dict(r)
            for r in conn.execute(
                text(
                    """
                    WITH RECURSIVE chain AS (
                        SELECT id, parent_id, prompt, lyrics, created_at, 0 AS depth
                        FROM prompt_revision WHERE id = :rev
                        UNION ALL
                        SELECT p.id, p.parent_id, p.prompt, p.lyrics, p.created_at, c.depth + 1
                        FROM prompt_revision p JOIN chain c ON p.id = c.parent_id
                        WHERE c.depth < 1000
                    )
                    SELECT id, prompt, lyrics, created_at FROM chain ORDER BY depth DESC
                    """
                ),
                {"rev": task["prompt_revision_id"]},
            ).mappings()
        ]
    return detail


def job_summary(job_id: uuid.UUID | None, rejected: int = 0) -> dict[str, Any]:
    """Counts for a job as the CLI and the summary artifact show them."""
    settings = get_settings()
    state = job_state(get_engine(), job_id)
    counts = state.counts
    return {
        "job_id": str(job_id) if job_id else None,
        "published": counts.get("published", 0),
        "quarantined": counts.get("quarantined", 0),
        "failed": counts.get("failed", 0),
        "pending": counts.get("pending", 0),
        "running": counts.get("running", 0),
        "rejected": rejected,
        "objects": (settings.s3_endpoint and f"s3://{settings.bucket}/{settings.env}/audio/")
        or str(settings.object_root / settings.bucket / settings.env / "audio"),
        "data_docs": str(settings.data_docs_dir / "index.html"),
    }


def job_outcome(engine: Engine, job_id: uuid.UUID) -> RunOutcome:
    """What a job's settled clips came to: failures by error class, quarantined."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT status, coalesce(error_class, 'internal') AS error_class, count(*) AS n "
                "FROM generation_task WHERE job_id = :id "
                "AND status IN ('published', 'quarantined', 'failed') "
                "GROUP BY status, coalesce(error_class, 'internal')"
            ),
            {"id": job_id},
        ).all()
    outcome = RunOutcome(processed=sum(int(r.n) for r in rows))
    for r in rows:
        if r.status == "failed":
            outcome.failed[r.error_class] = outcome.failed.get(r.error_class, 0) + int(r.n)
        elif r.status == "quarantined":
            outcome.quarantined += int(r.n)
    return outcome


def job_failure(engine: Engine, job_id: uuid.UUID, quarantine_fails_above: float) -> str | None:
    """The job's failure in one line (its clips failed, or too many quarantined), or None."""
    return failure_message(job_outcome(engine, job_id), quarantine_fails_above)
