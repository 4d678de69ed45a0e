"""How far embeddings go: coverage per encoder version, indexes, runs, a run's progress."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.db import plain_row
from stave.tasks.backfill.runs import RUNS
from stave.tasks.backfill.scope import Scope
from stave.tasks.vector_index import list_indexes


def latest_progress(engine: Engine, scope: Scope) -> dict[str, Any] | None:
    """The scope's newest run's counters (for a progress bar polling from another thread)."""
    return RUNS.latest(engine, scope.encoder_version, scope.digest)


def coverage(engine: Engine, current_version: str | None = None) -> dict[str, Any]:
    """Embeddings per encoder version against all assets, their indexes, and recent runs."""
    with engine.connect() as conn:
        assets = int(conn.execute(text("SELECT count(*) FROM audio_asset")).scalar_one())
        counts = conn.execute(
            text(
                "SELECT encoder_version, count(*) AS n, min(created_at) AS first, "
                "max(created_at) AS last FROM latent_embedding GROUP BY encoder_version "
                "ORDER BY encoder_version"
            )
        ).all()
        indexes = {i.encoder_version: i for i in list_indexes(conn)}
        runs = conn.execute(
            text(
                "SELECT id, encoder_version, status, planned, written, failed, batches, "
                "created_at, updated_at, finished_at, error, "
                "jsonb_path_query_array(failures, '$[0 to 19]') AS failures FROM backfill_run "
                "ORDER BY updated_at DESC LIMIT 10"
            )
        ).all()
    versions = []
    names = {r.encoder_version for r in counts} | ({current_version} if current_version else set())
    by_version = {r.encoder_version: r for r in counts}
    for version in sorted(names):
        row = by_version.get(version)
        index = indexes.get(version)
        n = int(row.n) if row else 0
        versions.append(
            {
                "encoder_version": version,
                "current": version == current_version,
                "embeddings": n,
                "coverage": round(n / assets, 4) if assets else None,
                "missing": max(assets - n, 0),
                "index": index.to_dict() if index else None,
                "newest": row.last.isoformat() if row else None,
            }
        )
    return {
        "assets": assets,
        "versions": versions,
        "runs": [plain_row(r) for r in runs],
    }
