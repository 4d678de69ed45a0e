"""Operator reports, read from the report views (sql/versions/0005): one query each."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.db import apply_user_scope, plain_row
from stave.infra.errors import InvalidInput

_SINCE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")


def since(value: str | None, now: datetime | None = None) -> datetime | None:
    """'7d', '12h', '2w' (or an ISO date) as the instant that long ago."""
    if value is None:
        return None
    match = _SINCE.match(value)
    now = now or datetime.now(UTC)
    if match:
        n, unit = int(match.group(1)), match.group(2)
        return (
            now - {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
        )
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as err:
        raise InvalidInput(f"--since {value!r}: give 7d, 12h, 2w or a date") from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _rows(
    engine: Engine, sql: str, params: dict[str, Any], user: str | None = None
) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        if user is not None:
            apply_user_scope(conn, user)  # row-level security: that user's rows only
        found = conn.execute(text(sql), params).all()
        conn.rollback()
    return [plain_row(row) for row in found]


def _utc_day_time(start: datetime | None) -> datetime | None:
    """The views' days are naive UTC timestamps: compare like with like."""
    return start.astimezone(UTC).replace(tzinfo=None) if start else None


def models(engine: Engine, start: datetime | None) -> list[dict[str, Any]]:
    """Per model version: how many clips it made (since `start`), their hours, first and last."""
    return _rows(
        engine,
        "SELECT name, version, checkpoint_sha256, sum(clips)::bigint AS clips, "
        "round(sum(seconds_of_audio)::numeric / 3600, 3) AS hours, min(day) AS first_day, "
        "max(day) AS last_day FROM report_model_clips "
        "WHERE CAST(:start AS timestamp) IS NULL OR day >= CAST(:start AS timestamp) "
        "GROUP BY name, version, checkpoint_sha256 ORDER BY clips DESC, name, version",
        {"start": _utc_day_time(start)},
    )


def failures(engine: Engine, start: datetime | None) -> list[dict[str, Any]]:
    """Failed (and quarantined) tasks per UTC day and error class."""
    return _rows(
        engine,
        "SELECT day, error_class, status, tasks FROM report_failures_daily "
        "WHERE CAST(:start AS timestamp) IS NULL "
        "OR day >= date_trunc('day', CAST(:start AS timestamp)) "
        "ORDER BY day DESC, tasks DESC, error_class",
        {"start": _utc_day_time(start)},
    )


def prompts(engine: Engine, user: str, start: datetime | None) -> list[dict[str, Any]]:
    """A user's prompt revisions, oldest first, each with the clips it produced."""
    return _rows(
        engine,
        "SELECT revision_id, parent_id, prompt, revised_at, task_id, status, asset_id, "
        "object_key, duration_s FROM report_prompt_history WHERE user_id = :u "
        "AND (CAST(:start AS timestamptz) IS NULL OR revised_at >= CAST(:start AS timestamptz)) "
        "ORDER BY revised_at, revision_id, task_created_at",
        {"u": user, "start": start},
        user=user,
    )
