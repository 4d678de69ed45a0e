"""The next page of a backfill: assets in scope without the version's embedding, in
`(created_at, id)` order past the run's cursor (keyset pagination on that index)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.tasks.backfill.scope import Scope
from stave.tasks.resumable import Cursor, Run


@dataclass(frozen=True)
class AssetRef:
    id: uuid.UUID
    created_at: datetime
    object_key: str
    sha256: str


def _pending_sql(scope: Scope, cursor: Cursor | None) -> str:
    where = ["a.created_at < :upper"]
    if cursor is not None:
        where.append("(a.created_at, a.id) > (:cursor_at, :cursor_id)")
    if scope.created_after is not None:
        where.append("a.created_at >= :after")
    if scope.model_version_ids:
        where.append("a.model_version_id = ANY(:model_ids)")
    where.append(
        "NOT EXISTS (SELECT 1 FROM latent_embedding e "
        "WHERE e.asset_id = a.id AND e.encoder_version = :version)"
    )
    return " AND ".join(where)


def _pending_params(scope: Scope, upper: datetime, cursor: Cursor | None) -> dict[str, Any]:
    return {
        "upper": upper,
        "cursor_at": cursor[0] if cursor else None,
        "cursor_id": cursor[1] if cursor else None,
        "after": scope.created_after,
        "model_ids": list(scope.model_version_ids),
        "version": scope.encoder_version,
    }


def count_in(conn: Connection, scope: Scope, upper: datetime, cursor: Cursor | None) -> int:
    return int(
        conn.execute(
            text(f"SELECT count(*) FROM audio_asset a WHERE {_pending_sql(scope, cursor)}"),
            _pending_params(scope, upper, cursor),
        ).scalar_one()
    )


def new_upper_bound(conn: Connection, scope: Scope) -> datetime:
    """Where a new run stops: now (the database's clock), or the scope's end if earlier."""
    upper: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return min(upper, scope.created_before) if scope.created_before is not None else upper


def next_page(
    engine: Engine, scope: Scope, run: Run, cursor: Cursor | None, size: int
) -> list[AssetRef]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.id, a.created_at, a.object_key, a.sha256 FROM audio_asset a "
                f"WHERE {_pending_sql(scope, cursor)} ORDER BY a.created_at, a.id LIMIT :n"
            ),
            {**_pending_params(scope, run.upper_bound, cursor), "n": size},
        ).all()
    return [AssetRef(r.id, r.created_at, r.object_key, r.sha256) for r in rows]
