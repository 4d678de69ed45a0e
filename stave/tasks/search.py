"""Sounds-alike search over latent embeddings: HNSW first, exact when filters need it.

pgvector 0.6 has no iterative index scans: an HNSW scan yields at most `hnsw.ef_search`
candidates and filters apply after it, so a selective filter can leave fewer than k rows.
Search therefore widens ef_search for filtered queries and, if k rows still do not come back,
answers with an exact scan over the filtered rows — correct, and cheap precisely because the
filter is selective. Each encoder version has its own partial HNSW index (vector_index.py).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.generator.errors import GeneratorError
from stave.infra.db import apply_user_scope, user_scope_sql
from stave.infra.errors import InvalidInput, NotFound
from stave.infra.settings import Settings
from stave.models.assets import EMBEDDING_DIM
from stave.tasks import vector_index
from stave.tasks.catalog import resolve_model_versions
from stave.tasks.encoders import load_encoder
from stave.tasks.inference import current_encoder_version

MAX_K = 1000
# pgvector caps hnsw.ef_search at 1000.
MAX_EF_SEARCH = 1000


@dataclass(frozen=True)
class Neighbour:
    asset_id: uuid.UUID
    distance: float
    prompt: str | None
    user_id: str
    model_version: str | None
    duration_s: float
    object_key: str
    sha256: str
    task_id: uuid.UUID | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("asset_id", "task_id"):
            out[key] = str(out[key]) if out[key] else None
        out["created_at"] = self.created_at.isoformat()
        return out


@dataclass
class SearchResult:
    encoder_version: str
    method: str  # "hnsw" or "exact"
    ef_search: int | None
    neighbours: list[Neighbour] = field(default_factory=list)
    query_asset: uuid.UUID | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder_version": self.encoder_version,
            "method": self.method,
            "ef_search": self.ef_search,
            "query_asset": str(self.query_asset) if self.query_asset else None,
            "neighbours": [n.to_dict() for n in self.neighbours],
        }


def query_vector(vector: Any) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (EMBEDDING_DIM,):
        raise InvalidInput(f"query vector has shape {array.shape}, expected ({EMBEDDING_DIM},)")
    if not np.all(np.isfinite(array)) or not np.any(array):
        raise InvalidInput("query vector has NaN, infinite or only zero values")
    return array


def embedding_of(conn: Connection, asset_id: uuid.UUID, encoder_version: str) -> np.ndarray:
    exists = conn.execute(
        text("SELECT 1 FROM audio_asset WHERE id = :id"), {"id": asset_id}
    ).first()
    if exists is None:
        raise NotFound(f"asset {asset_id}: no such asset")
    vector = conn.execute(
        text(
            "SELECT embedding FROM latent_embedding WHERE asset_id = :id AND encoder_version = :v"
        ),
        {"id": asset_id, "v": encoder_version},
    ).scalar()
    if vector is None:
        raise NotFound(
            f"asset {asset_id} has no embedding for encoder {encoder_version} "
            f"(`stave backfill --encoder-version {encoder_version}` computes it)"
        )
    return np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, np.float32)


def similar(
    engine: Engine,
    settings: Settings,
    *,
    asset_id: uuid.UUID | None = None,
    vector: Any = None,
    k: int = 10,
    encoder_version: str | None = None,
    model_version: str | None = None,
    user_id: str | None = None,
    exact: bool = False,
) -> SearchResult:
    """The k clips nearest (cosine) to an asset or a vector, with optional filters."""
    if (asset_id is None) == (vector is None):
        raise InvalidInput("give exactly one of an asset id or a vector")
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k {k}: must be between 1 and {MAX_K}")
    if encoder_version is None:
        encoder_version = current_encoder_version(settings)
    vector_index.check_encoder_version(encoder_version)
    with engine.connect() as conn:
        scope = ""
        if user_id is not None:
            # Row-level security, not only the WHERE below: the query asset must be the
            # user's too, and nothing of another user's can come back.
            scope = user_scope_sql(apply_user_scope(conn, user_id))
        if asset_id is not None:
            query = embedding_of(conn, asset_id, encoder_version)
        else:
            query = query_vector(vector)
        model_ids = resolve_model_versions(conn, model_version) if model_version else None
        filtered = model_ids is not None or user_id is not None
        where, params = _filters(encoder_version, asset_id, model_ids, user_id)
        params["q"] = query
        result = SearchResult(encoder_version, "exact", None, query_asset=asset_id)
        indexed = vector_index.has_index(conn, encoder_version)
        # The lookups' transaction ends here: the search itself is one round trip.
        conn.rollback()
        if indexed and not exact:
            ef = max(settings.hnsw_ef_search, k + 1)
            if filtered:
                ef = max(ef, 10 * k)  # over-fetch: filters apply after the index scan
            ef = min(ef, MAX_EF_SEARCH)
            rows = _search(conn, where, params, k, ef=ef, scope=scope)
            if len(rows) == k:
                result.method, result.ef_search = "hnsw", ef
                result.neighbours = rows
                return result
        result.neighbours = _search(conn, where, params, k, ef=None, scope=scope)
        return result


def _filters(
    encoder_version: str,
    asset_id: uuid.UUID | None,
    model_ids: list[uuid.UUID] | None,
    user_id: str | None,
) -> tuple[str, dict[str, Any]]:
    where = ["e.encoder_version = %(v)s"]
    params: dict[str, Any] = {"v": encoder_version}
    if asset_id is not None:
        where.append("e.asset_id <> %(self)s")
        params["self"] = asset_id
    if model_ids is not None:
        where.append("a.model_version_id = ANY(%(model_ids)s)")
        params["model_ids"] = model_ids
    if user_id is not None:
        where.append("a.user_id = %(user_id)s")
        params["user_id"] = user_id
    return " AND ".join(where), params


def _search(
    conn: Connection,
    where: str,
    params: dict[str, Any],
    k: int,
    ef: int | None,
    scope: str = "",
) -> list[Neighbour]:
    """One round trip: the settings and the query go as one statement string, bound on the
    client, which the server runs as one implicit transaction (so SET LOCAL holds for the
    query and ends with it). A search is ~2 ms; separate round trips for the settings, BEGIN
    and ROLLBACK would add about as much again."""
    if ef is None:
        # Exact: the ordering expression differs from the indexed one, so no index scan.
        settings_sql = ""
        order = "(e.embedding <=> %(q)s) + 0"
    else:
        settings_sql = f"SET LOCAL hnsw.ef_search = {int(ef)}; "
        order = "distance"
    sql = (
        # The partial index's predicate must be visible to the planner: no generic plans.
        "SET LOCAL plan_cache_mode = force_custom_plan; "
        f"{scope}{settings_sql}"
        "SELECT n.*, t.prompt, mv.name || ':' || mv.version AS model FROM ("
        "SELECT a.id, e.embedding <=> %(q)s AS distance, a.user_id, a.duration_s, "
        "a.object_key, a.sha256, a.task_id, a.created_at, a.model_version_id "
        "FROM latent_embedding e JOIN audio_asset a ON a.id = e.asset_id "
        f"WHERE {where} ORDER BY {order} LIMIT %(k)s) n "
        "LEFT JOIN generation_task t ON t.id = n.task_id "
        "LEFT JOIN model_version mv ON mv.id = n.model_version_id "
        "ORDER BY n.distance, n.id"
    )
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    driver.autocommit = True
    try:
        with psycopg.ClientCursor(driver, row_factory=namedtuple_row) as cur:
            cur.execute(sql, {**params, "k": k})
            while cur.description is None and cur.nextset():
                pass
            rows: list[Any] = cur.fetchall()
    finally:
        driver.autocommit = False
    return [
        Neighbour(
            asset_id=r.id,
            distance=float(r.distance),
            prompt=r.prompt,
            user_id=r.user_id,
            model_version=r.model,
            duration_s=float(r.duration_s),
            object_key=r.object_key,
            sha256=r.sha256,
            task_id=r.task_id,
            created_at=r.created_at,
        )
        for r in rows
    ]


def embed_file(
    engine: Engine, settings: Settings, path: Path, encoder_version: str | None
) -> np.ndarray:
    """A file's embedding with the encoder of `encoder_version` (default: the configured one)."""
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    encoder = load_encoder(engine, settings, encoder_version, None)
    try:
        return np.asarray(encoder.generator.embed_file(path), dtype=np.float32)
    except GeneratorError as err:
        raise InvalidInput(f"{path}: {err}") from err
