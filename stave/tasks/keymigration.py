"""Moving objects written before keys were scoped by environment (`audio/…` → `<env>/audio/…`).

`stave store migrate-keys` runs this for the configured environment. Which legacy objects are
this environment's is decided by its own records, never by listing a shared bucket:
- the rows that hold a key (`audio_asset`, `archive_batch`, `backup_record`) and the audio
  that archival moved (`archive_batch.moved_objects`), each with the sha256 it was written with;
- the prefixes that already named the environment (`backups/<env>/`, `gallery/<env>/`,
  `data-docs/<env>/`), whose every object moves, checked against the sha256 the store recorded.

Each object is copied to its scoped key and the copy read back against the sha256 before
anything points at it; then the rows are updated (a page of rows per transaction); only then
is the old object deleted. Killed at any point, a rerun finishes the job: rows already scoped
are skipped, a copy already there with the right sha256 is not made again, and an old object
whose scoped copy exists with the same sha256 is deleted. Legacy `prompts/` and unreferenced
`audio/` objects cannot be told apart from another environment's and are left (and counted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import ObjectNotFound
from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.keys import LEGACY_PREFIXES, scoped_key

PAGE = 500
# Tables whose rows hold one object key, with the column that has its sha256 (None: use the
# sha256 the store recorded).
KEYED_TABLES = (("audio_asset", "sha256"), ("backup_record", "sha256"), ("archive_batch", None))
# Legacy prefixes that name the environment: everything under them is this environment's.
OWN_PREFIXES = ("backups/{env}/", "gallery/{env}/", "data-docs/{env}/")


@dataclass
class Migrated:
    rows: int = 0
    objects: int = 0
    already: int = 0
    left: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def migrate_keys(
    engine: Engine,
    store: ObjectStore,
    env_name: str,
    progress: Callable[[int], None] | None = None,
) -> Migrated:
    done = Migrated()
    tick = progress or (lambda _n: None)
    for table, sha_column in KEYED_TABLES:
        _rows(engine, store, env_name, table, sha_column, done, tick)
    _archived_audio(engine, store, env_name, done, tick)
    for pattern in OWN_PREFIXES:
        for info in list(store.list(pattern.format(env=env_name))):
            new = scoped_key(env_name, info.key)
            if new is not None:
                _move(store, info.key, new, info.sha256, done)
                tick(1)
    # What is left under the shared legacy prefixes: finished moves whose old object survived a
    # crash are removed; anything else is not this environment's to move.
    for old, _new in LEGACY_PREFIXES:
        if "{env}" in old:
            continue
        for info in list(store.list(old)):
            new = scoped_key(env_name, info.key)
            sha = info.sha256 or store.stat(info.key).sha256  # S3 listings carry no sha256
            if new is not None and sha is not None and _same(store, new, sha):
                store.delete(info.key)
            else:
                done.left += 1
    return done


def _rows(
    engine: Engine,
    store: ObjectStore,
    env_name: str,
    table: str,
    sha_column: str | None,
    done: Migrated,
    tick: Callable[[int], None],
) -> None:
    sha = sha_column or "NULL"
    after: Any = None
    while True:
        with engine.connect() as conn:
            page = conn.execute(
                text(
                    f"SELECT id, object_key, {sha} AS sha256 FROM {table} "
                    "WHERE object_key NOT LIKE :scoped AND (CAST(:after AS uuid) IS NULL "
                    "OR id > CAST(:after AS uuid)) ORDER BY id LIMIT :n"
                ),
                {"scoped": f"{env_name}/%", "after": after, "n": PAGE},
            ).all()
        if not page:
            return
        after = page[-1].id
        updates = []
        for row in page:
            new = scoped_key(env_name, row.object_key)
            if new is None:
                continue  # another environment's key, or one this migration does not know
            if _move(store, row.object_key, new, row.sha256, done, delete_old=False):
                updates.append({"id": row.id, "key": new, "old": row.object_key})
        with engine.begin() as conn:
            for update in updates:
                conn.execute(text(f"UPDATE {table} SET object_key = :key WHERE id = :id"), update)
        # Only once no row points at them any more.
        store.delete_many([u["old"] for u in updates])  # each copy was checked by _move
        done.rows += len(updates)
        tick(len(page))


def _archived_audio(
    engine: Engine,
    store: ObjectStore,
    env_name: str,
    done: Migrated,
    tick: Callable[[int], None],
) -> None:
    """Audio moved by archival: its rows are in Parquet files, not in the database, so the
    batch's record of the move says which objects are this environment's."""
    with engine.connect() as conn:
        batches = conn.execute(
            text(
                "SELECT moved_objects FROM archive_batch WHERE status = 'committed' "
                "AND jsonb_array_length(moved_objects) > 0"
            )
        ).scalars()
        moved = [m for objects in batches for m in objects]
    for item in moved:
        new = scoped_key(env_name, item["to"])
        if new is not None:
            _move(store, item["to"], new, item.get("sha256"), done)
            tick(1)


def _move(
    store: ObjectStore,
    old: str,
    new: str,
    sha256: str | None,
    done: Migrated,
    *,
    delete_old: bool = True,
) -> bool:
    """Copy `old` to `new` and check the copy; True when `new` holds the object."""
    try:
        expected = sha256 or store.stat(old).sha256
    except ObjectNotFound:
        return _same(store, new, sha256)  # moved before a crash, or a row whose object is gone
    if expected is not None and _same(store, new, expected):
        done.already += 1
    else:
        store.copy(old, new)
        store.verify(new, expected_sha256=expected)
        done.objects += 1
    if delete_old:
        store.delete(old)
    return True


def _same(store: ObjectStore, key: str, sha256: str | None) -> bool:
    try:
        held = store.stat(key)
    except ObjectNotFound:
        return False
    return sha256 is None or held.sha256 == sha256
