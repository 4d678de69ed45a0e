"""Which assets a backfill covers: an encoder version, a date range, model versions."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput
from stave.tasks.catalog import resolve_model_versions
from stave.tasks.vector_index import check_encoder_version


@dataclass(frozen=True)
class Scope:
    """Which assets a run covers; its digest names the run to resume."""

    encoder_version: str
    created_after: datetime | None = None
    created_before: datetime | None = None
    model_version_ids: tuple[uuid.UUID, ...] = ()
    model_version: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()

    def params(self) -> dict[str, Any]:
        return {
            "created_after": _iso(self.created_after),
            "created_before": _iso(self.created_before),
            "model_version_ids": sorted(str(i) for i in self.model_version_ids),
        }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def resolve_scope(
    engine: Engine,
    encoder_version: str,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    model_version: str | None = None,
) -> Scope:
    check_encoder_version(encoder_version)
    after, before = _aware(created_after), _aware(created_before)
    if after and before and after >= before:
        raise InvalidInput(f"created_after ({after}) must be before created_before ({before})")
    ids: tuple[uuid.UUID, ...] = ()
    if model_version:
        with engine.connect() as conn:
            ids = tuple(resolve_model_versions(conn, model_version))
    return Scope(encoder_version, after, before, ids, model_version)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
