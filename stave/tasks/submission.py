"""Submitting checked rows: a job, its tasks and the prompt-revision chain, in one transaction.

Defaults are merged per row (row > style template > user preferences > settings), seeds are
drawn here when a row gives none (so every task records the seed it will use), and each row gets
an idempotency key: the row's own, or one derived from the source's sha256, the row number and
its content. Rows whose key already exists are not submitted again; a file whose every row
exists already reports the existing job and writes nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from stave.infra.cache import get_cache
from stave.infra.settings import Settings
from stave.models.base import new_id, utcnow
from stave.models.generation import GenerationJob, GenerationTask, PromptRevision, TaskEvent
from stave.tasks import catalog
from stave.tasks.intake import (
    MAX_SEED,
    CheckedRow,
    Rejection,
    SourceRows,
    check_parameters,
    check_rows,
)


@dataclass
class Submission:
    job_id: uuid.UUID | None
    created: bool
    total: int
    accepted: int
    rejected: list[Rejection] = field(default_factory=list)
    already_submitted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id) if self.job_id else None,
            "created": self.created,
            "total": self.total,
            "accepted": self.accepted,
            "already_submitted": self.already_submitted,
            "rejected": len(self.rejected),
            "rejections": [r.to_dict() for r in self.rejected],
        }


def submit(
    engine: Engine,
    source: SourceRows,
    settings: Settings,
    *,
    submitted_by: str | None = None,
    user_id: str | None = None,
) -> Submission:
    """Check, resolve defaults and write the job; a concurrent duplicate is retried once."""
    checked, rejected = check_rows(source)
    for attempt in (1, 2):
        try:
            return _submit_once(
                engine, source, settings, checked, list(rejected), submitted_by, user_id
            )
        except IntegrityError:
            # Another submission of the same rows committed between our lookup and insert:
            # the second pass finds its tasks and reports them.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _submit_once(
    engine: Engine,
    source: SourceRows,
    settings: Settings,
    checked: list[CheckedRow],
    rejected: list[Rejection],
    submitted_by: str | None,
    user_id: str | None,
) -> Submission:
    lines = {number: line for number, line, _ in source.rows}
    total = len(source.rows) + len(source.unreadable)
    default_user = user_id or settings.default_user
    with Session(engine) as session, session.begin():
        # Hot configuration through the cache (Redis or an in-process LRU), misses from here.
        cache, conn = get_cache(settings), session.connection()
        names = {r.style_template for r in checked if r.style_template}
        templates = catalog.templates(conn, cache, settings, names)
        users = {r.user_id or default_user for r in checked}
        preferences = catalog.preferences(conn, cache, settings, users)
        parents = _parents(session, {r.parent_revision for r in checked if r.parent_revision})

        planned: list[tuple[CheckedRow, str, dict[str, Any], str]] = []
        for row in checked:
            owner = row.user_id or default_user
            problem, parameters = _resolve(row, owner, settings, templates, preferences, parents)
            if problem is not None:
                rejected.append(Rejection(row.row, problem[0], problem[1], lines.get(row.row)))
                continue
            planned.append((row, owner, parameters, _key(row, source)))

        found = session.execute(
            text(
                "SELECT idempotency_key, job_id FROM generation_task "
                "WHERE idempotency_key = ANY(:keys)"
            ),
            {"keys": [k for *_, k in planned]},
        ).all()
        existing: dict[str, uuid.UUID] = {str(k): j for k, j in found}
        fresh = [p for p in planned if p[3] not in existing]
        rejected.sort(key=lambda r: r.row)
        if not planned:
            # Every row rejected: nothing to record but the rejections the caller reports.
            return Submission(None, False, total, 0, rejected, 0)
        if not fresh:
            prior = _prior_job(session, existing, source.sha256)
            if prior is not None:
                return Submission(prior, False, total, 0, rejected, len(existing))

        job_id = new_id()
        now = utcnow()
        session.execute(
            insert(GenerationJob),
            [
                {
                    "id": job_id,
                    "submitted_by": submitted_by or default_user,
                    "source_uri": source.uri,
                    "source_sha256": source.sha256,
                    "parameters": {
                        "format": source.fmt,
                        "user_id": default_user,
                        "defaults": _settings_defaults(settings),
                        "already_submitted": len(existing),
                    },
                    "total_rows": total,
                    "accepted_rows": len(fresh),
                    "rejected_rows": len(rejected),
                    "rejections": [r.to_dict() for r in rejected],
                    "created_at": now,
                }
            ],
        )
        revisions: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for row, owner, parameters, key in fresh:
            revision_id = _revision(row, owner, parents, revisions, now)
            task_id = new_id()
            tasks.append(
                {
                    "id": task_id,
                    "job_id": job_id,
                    "user_id": owner,
                    "prompt_revision_id": revision_id,
                    "prompt": row.prompt,
                    "lyrics": row.lyrics,
                    "parameters": parameters,
                    "idempotency_key": key,
                    "status": "pending",
                    "attempts": 0,
                    "max_attempts": settings.max_attempts,
                    "created_at": now,
                }
            )
            events.append(
                {
                    "task_id": task_id,
                    "from_status": None,
                    "to_status": "pending",
                    "detail": {"job_id": str(job_id), "row": row.row},
                    "created_at": now,
                }
            )
        if revisions:
            session.execute(insert(PromptRevision), revisions)
        if tasks:
            session.execute(insert(GenerationTask), tasks)
            session.execute(insert(TaskEvent), events)
    return Submission(job_id, True, total, len(fresh), rejected, len(existing))


def _settings_defaults(settings: Settings) -> dict[str, Any]:
    return {
        "duration_s": settings.default_duration_s,
        "steps": settings.default_steps,
        "guidance": settings.default_guidance,
        "scheduler": settings.default_scheduler,
    }


def _resolve(
    row: CheckedRow,
    owner: str,
    settings: Settings,
    templates: dict[str, dict[str, Any]],
    preferences: dict[str, dict[str, Any]],
    parents: dict[uuid.UUID, PromptRevision],
) -> tuple[tuple[str, str] | None, dict[str, Any]]:
    """Merged parameters for a row, or the (field, reason) that stops it."""
    if row.style_template is not None and row.style_template not in templates:
        return ("style_template", f"no style template named {row.style_template!r}"), {}
    if row.parent_revision is not None:
        parent = parents.get(row.parent_revision)
        if parent is None:
            return ("parent_revision", f"no prompt revision {row.parent_revision}"), {}
        if parent.user_id != owner:
            return ("parent_revision", f"revision {row.parent_revision} is another user's"), {}
    layers = [
        ("settings", _settings_defaults(settings)),
        (f"user {owner}'s preferences", preferences.get(owner, {})),
        (f"style template {row.style_template!r}", templates.get(row.style_template or "", {})),
    ]
    merged: dict[str, Any] = {}
    for origin, layer in layers:
        known = {
            k: v for k, v in layer.items() if k in ("duration_s", "steps", "guidance", "scheduler")
        }
        problem = check_parameters(known)
        if problem is not None:
            return (problem[0], f"{problem[1]} (from {origin})"), {}
        merged.update(known)
    merged.update(row.parameters)
    merged["duration_s"] = float(merged["duration_s"])
    merged["steps"] = int(merged["steps"])
    merged["guidance"] = float(merged["guidance"])
    merged["scheduler"] = str(merged["scheduler"]).lower()
    # Drawn now, not at generation time: the task's record holds its seed from the start.
    merged.setdefault("seed", secrets.randbelow(MAX_SEED + 1))
    merged["seed_given"] = "seed" in row.parameters
    if row.style_template:
        merged["style_template"] = row.style_template
    return None, merged


def _key(row: CheckedRow, source: SourceRows) -> str:
    if row.idempotency_key is not None:
        return row.idempotency_key
    digest = hashlib.sha256(
        f"{source.sha256}\0{row.row}\0{row.fingerprint}".encode("utf-8", "surrogatepass")
    ).hexdigest()
    return f"auto-{digest[:48]}"


def _revision(
    row: CheckedRow,
    owner: str,
    parents: dict[uuid.UUID, PromptRevision],
    revisions: list[dict[str, Any]],
    now: Any,
) -> uuid.UUID:
    """The row's prompt revision: its parent when the text is unchanged, else a new one."""
    parent = parents.get(row.parent_revision) if row.parent_revision else None
    if parent is not None and parent.prompt == row.prompt and parent.lyrics == row.lyrics:
        return parent.id
    revision_id = new_id()
    revisions.append(
        {
            "id": revision_id,
            "user_id": owner,
            "parent_id": parent.id if parent else None,
            "prompt": row.prompt,
            "lyrics": row.lyrics,
            "created_at": now,
        }
    )
    return revision_id


def _parents(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, PromptRevision]:
    if not ids:
        return {}
    found = session.exec(select(PromptRevision).where(PromptRevision.id.in_(ids)))  # type: ignore[call-overload,attr-defined]
    return {r.id: r for (r,) in found}


def _prior_job(
    session: Session, existing: dict[str, uuid.UUID], source_sha256: str
) -> uuid.UUID | None:
    """The job a resubmission repeats: where most of its rows went, else the same file's job."""
    if existing:
        return Counter(existing.values()).most_common(1)[0][0]
    found = session.execute(
        text(
            "SELECT id FROM generation_job WHERE source_sha256 = :sha ORDER BY created_at LIMIT 1"
        ),
        {"sha": source_sha256},
    ).scalar_one_or_none()
    return uuid.UUID(str(found)) if found is not None else None
