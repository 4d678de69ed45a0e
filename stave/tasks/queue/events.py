"""Every status change of a task is a `task_event` row: the audit trail."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

_EVENTS = text(
    """
    INSERT INTO task_event (task_id, from_status, to_status, detail, created_at)
    SELECT CAST(e->>'task_id' AS uuid), e->>'from', e->>'to', e->'detail', now()
    FROM jsonb_array_elements(CAST(:events AS jsonb)) AS e
    """
)


def log_events(conn: Connection, events: list[dict[str, Any]]) -> None:
    """`events`: task_id, from, to and detail each, written in one statement."""
    if events:
        conn.execute(_EVENTS, {"events": json.dumps(events, default=str)})
