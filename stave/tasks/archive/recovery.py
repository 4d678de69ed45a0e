"""What a crashed run left: files of groups still `writing`, removed before the next run starts."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.objectstore import ObjectStore


def clean_unfinished(engine: Engine, store: ObjectStore) -> int:
    """Remove the files of groups left `writing` (and audio copies of assets still hot)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, object_key, moved_objects FROM archive_batch WHERE status = 'writing'")
        ).all()
        hot = {
            str(i)
            for i in conn.execute(
                text("SELECT id FROM audio_asset WHERE id = ANY(:ids)"),
                {"ids": [uuid.UUID(m["asset_id"]) for r in rows for m in r.moved_objects]},
            ).scalars()
        }
    for row in rows:
        store.delete(row.object_key)
        store.delete_many([m["to"] for m in row.moved_objects if m["asset_id"] in hot])
    if rows:
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM archive_batch WHERE id = ANY(:ids) AND status = 'writing'"),
                {"ids": [r.id for r in rows]},
            )
    return len(rows)
