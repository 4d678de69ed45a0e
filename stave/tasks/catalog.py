"""The catalogue: model versions by name, and the hot configuration (style templates and
user preferences), read through the cache and written to the database first.

Model versions: an operator names one by its id, its version or name:version.

Reads: the cache, and for misses one query for all of them; what was read is offered to the
cache with its version (`updated_at`). Writes: upsert with `updated_at = clock_timestamp()`
(taken under the row lock, so a later commit has a later version), commit, then store the new
value in the cache. The cache refuses anything older than what it holds, so a reader that
loaded the old value before the commit cannot put it back afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.infra.cache import ConfigCache, cache_key
from stave.infra.db import plain_row
from stave.infra.errors import InvalidInput, NotFound
from stave.infra.settings import Settings
from stave.tasks.intake import check_parameters

# The parameters a template or preference may set (a row's own generation parameters).
KNOWN = ("duration_s", "steps", "guidance", "scheduler")
MISSING = None  # cached for names that do not exist, so a typo is not a query every time


def _version(updated_at: datetime) -> float:
    return updated_at.timestamp()


def _read_through(
    conn: Connection,
    cache: ConfigCache,
    settings: Settings,
    kind: str,
    names: Iterable[str],
    sql: str,
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for name in set(names):
        hit, value = cache.get(cache_key(settings, kind, name))
        if not hit:
            missing.append(name)
        elif value is not MISSING:
            found[name] = value
    if missing:
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(text(sql), {"names": missing})}
        for name in missing:
            parameters, updated_at = rows.get(name, (MISSING, None))
            # An absent name is cached at version 0: creating it (any real version) wins.
            version = _version(updated_at) if updated_at is not None else 0.0
            cache.store_if_newer(cache_key(settings, kind, name), parameters, version)
            if parameters is not MISSING:
                found[name] = parameters
    return found


def templates(
    conn: Connection, cache: ConfigCache, settings: Settings, names: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Parameters of the named style templates that exist."""
    return _read_through(
        conn,
        cache,
        settings,
        "template",
        names,
        "SELECT name, parameters, updated_at FROM style_template WHERE name = ANY(:names)",
    )


def preferences(
    conn: Connection, cache: ConfigCache, settings: Settings, users: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Default parameters of the users that have any."""
    return _read_through(
        conn,
        cache,
        settings,
        "prefs",
        users,
        "SELECT user_id, parameters, updated_at FROM user_preference WHERE user_id = ANY(:names)",
    )


def checked_parameters(parameters: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Only known parameters with valid values; one line naming the first problem."""
    unknown = sorted(set(parameters) - set(KNOWN))
    if unknown:
        raise InvalidInput(f"{where}: unknown parameter {unknown[0]!r}; known: {', '.join(KNOWN)}")
    problem = check_parameters(parameters)
    if problem is not None:
        raise InvalidInput(f"{where}: {problem[0]}: {problem[1]}")
    return dict(parameters)


def put_template(
    engine: Engine,
    cache: ConfigCache,
    settings: Settings,
    name: str,
    parameters: Mapping[str, Any],
    description: str | None = None,
) -> dict[str, Any]:
    """Create or replace a style template; the cache serves the new value once this returns."""
    values = checked_parameters(parameters, f"template {name!r}")
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "INSERT INTO style_template (id, name, description, parameters, created_at, "
                "updated_at) VALUES (gen_random_uuid(), :name, coalesce(:d, ''), "
                "CAST(:p AS jsonb), now(), clock_timestamp()) "
                "ON CONFLICT (name) DO UPDATE SET parameters = EXCLUDED.parameters, "
                "description = coalesce(:d, style_template.description), "
                "updated_at = clock_timestamp() RETURNING parameters, updated_at"
            ),
            {"name": name, "d": description, "p": json.dumps(values, sort_keys=True)},
        ).one()
    # After the commit: a reader never sees the new value in the cache before the database.
    cache.store_if_newer(cache_key(settings, "template", name), row[0], _version(row[1]))
    return {"name": name, "parameters": row[0], "updated_at": row[1].isoformat()}


def put_preferences(
    engine: Engine,
    cache: ConfigCache,
    settings: Settings,
    user_id: str,
    parameters: Mapping[str, Any],
) -> dict[str, Any]:
    """Set a user's default parameters (replacing the previous ones)."""
    values = checked_parameters(parameters, f"preferences of {user_id!r}")
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "INSERT INTO user_preference (id, user_id, parameters, created_at, updated_at) "
                "VALUES (gen_random_uuid(), :u, CAST(:p AS jsonb), now(), clock_timestamp()) "
                "ON CONFLICT (user_id) DO UPDATE SET parameters = EXCLUDED.parameters, "
                "updated_at = clock_timestamp() RETURNING parameters, updated_at"
            ),
            {"u": user_id, "p": json.dumps(values, sort_keys=True)},
        ).one()
    cache.store_if_newer(cache_key(settings, "prefs", user_id), row[0], _version(row[1]))
    return {"user_id": user_id, "parameters": row[0], "updated_at": row[1].isoformat()}


def list_templates(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, description, parameters, updated_at FROM style_template ORDER BY 1")
        ).all()
    return [plain_row(r) for r in rows]


def resolve_model_versions(conn: Connection, model_version: str) -> list[uuid.UUID]:
    """Model version ids named by an id, a version or name:version; NotFound when none."""
    found = conn.execute(
        text(
            "SELECT id FROM model_version WHERE id::text = :v OR version = :v "
            "OR name || ':' || version = :v"
        ),
        {"v": model_version},
    ).scalars()
    ids = sorted(uuid.UUID(str(i)) for i in found)
    if not ids:
        raise NotFound(
            f"model version {model_version!r}: no such model version (give its id, its "
            "version or name:version)"
        )
    return ids
