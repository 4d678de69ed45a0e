"""Garbage collection: audio objects that no record points to, and listening pages past their
days (`STAVE_GALLERY_KEEP_DAYS`: on S3 the bucket's rule expires them too; a filesystem store
has no rules, so this is what bounds its `gallery/`).

A batch deletes its own objects when its commit fails, but a process killed between the put and
the commit leaves its objects behind. `stave gc` lists them (dry run by default) and removes
them with `--delete`. Objects younger than a grace period are never touched: they may belong to
a batch that is about to commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.keys import validate_prefix
from stave.models.base import utcnow

# Under the environment's own prefix only: another environment's audio in a shared bucket is
# not this database's to judge.
PREFIXES = ("{env}/audio/", "{env}/archive/audio/")


@dataclass
class Sweep:
    scanned: int = 0
    orphans: list[str] = field(default_factory=list)
    orphan_bytes: int = 0
    deleted: int = 0
    too_young: int = 0
    expired_pages: list[str] = field(default_factory=list)
    expired_page_bytes: int = 0


def sweep(
    engine: Engine,
    store: ObjectStore,
    *,
    env_name: str,
    delete: bool,
    grace: timedelta = timedelta(hours=1),
    pages_kept: timedelta | None = None,
) -> Sweep:
    result = Sweep()
    cutoff = utcnow() - grace
    if pages_kept is not None:
        expired = utcnow() - pages_kept
        for info in store.list(validate_prefix(f"{env_name}/gallery/")):
            if info.last_modified is not None and info.last_modified < expired:
                result.expired_pages.append(info.key)
                result.expired_page_bytes += info.size
        if delete:
            store.delete_many(result.expired_pages)
    for pattern in PREFIXES:
        prefix = validate_prefix(pattern.format(env=env_name))
        batch: list[tuple[str, int, bool]] = []
        for info in store.list(prefix):
            young = info.last_modified is not None and info.last_modified > cutoff
            batch.append((info.key, info.size, young))
            if len(batch) >= 1000:
                _check(engine, batch, result)
                batch = []
        _check(engine, batch, result)
    if delete and result.orphans:
        store.delete_many(result.orphans)
        result.deleted = len(result.orphans)
    return result


def _check(engine: Engine, batch: list[tuple[str, int, bool]], result: Sweep) -> None:
    if not batch:
        return
    result.scanned += len(batch)
    keys = [key for key, _, _ in batch]
    with engine.connect() as conn:
        known = set(
            conn.execute(
                text("SELECT object_key FROM audio_asset WHERE object_key = ANY(:keys)"),
                {"keys": keys},
            ).scalars()
        )
        # Archived assets record their moved keys in archive_batch.moved_objects (#7).
        known |= set(
            conn.execute(
                text(
                    "SELECT m->>'to' FROM archive_batch, jsonb_array_elements(moved_objects) m "
                    "WHERE m->>'to' = ANY(:keys)"
                ),
                {"keys": keys},
            ).scalars()
        )
    for key, size, young in batch:
        if key in known:
            continue
        if young:
            result.too_young += 1
            continue
        result.orphans.append(key)
        result.orphan_bytes += size
