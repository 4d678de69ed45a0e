"""Carrying a pilot into production: a filesystem store's objects into the configured store.

`stave store copy` runs this (docs/production.md, "Moving a pilot"). Every object under the
pilot's `<from_env>/` is copied to the same key under this environment's `<env>/`, its bytes
checked against the sha256 the pilot's store recorded before the next one starts; an object
already there with that sha256 is not copied again, so a rerun finishes an interrupted copy.
The pilot server's own base backups and WAL are left behind: they belong to another cluster,
and recovery in production must never choose them.

Then the records: rows restored from the pilot's dump (`stave backup restore`) still name the
pilot's keys, so every key under `<from_env>/` is repointed to `<env>/` in one transaction per
table. Running the copy again after the restore does that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, ObjectCorrupted, ObjectNotFound
from stave.infra.objectstore.base import ChunkReader, ObjectStore
from stave.infra.objectstore.keys import env_root

# The pilot server's physical backups: useless to another cluster, dangerous beside its own.
LEFT_BEHIND = ("backups/base/", "backups/wal/")
# Rows that hold one object key each.
KEYED_TABLES = ("audio_asset", "backup_record", "archive_batch")


@dataclass
class Carried:
    objects: int = 0
    bytes: int = 0
    already: int = 0
    left_behind: int = 0
    rows: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def copy_objects(
    source: ObjectStore,
    target: ObjectStore,
    *,
    from_env: str,
    to_env: str,
    progress: Callable[[int], None] | None = None,
) -> Carried:
    """Copy the pilot's objects (see the module's docstring); `progress` gets bytes."""
    if source.describe() == target.describe() and from_env == to_env:
        raise InvalidInput(f"{source.describe()} is the configured store itself: nothing to copy")
    tick = progress or (lambda _n: None)
    old_root, new_root = env_root(from_env), env_root(to_env)
    done = Carried()
    for info in source.list(old_root):
        rest = info.key.removeprefix(old_root)
        if rest.startswith(LEFT_BEHIND):
            done.left_behind += 1
            continue
        new = new_root + rest
        expected = info.sha256 or source.stat(info.key).sha256
        if expected is None:
            raise ObjectCorrupted(f"{source.describe()}: {info.key} has no recorded sha256")
        if _holds(target, new, expected):
            done.already += 1
            tick(info.size)
            continue
        chunks = source.iter_chunks(info.key, expected_sha256=expected)
        stored = target.put_stream(new, ChunkReader(chunks), content_type=info.content_type)  # type: ignore[arg-type]
        if stored.sha256 != expected:  # the source's check raises first; this is the target's
            target.delete(new)
            raise ObjectCorrupted(
                f"{target.describe()}: the copy of {info.key} at {new} has sha256 "
                f"{stored.sha256}, not {expected}; removed, run the copy again"
            )
        done.objects += 1
        done.bytes += stored.size
        tick(info.size)
    return done


def _holds(store: ObjectStore, key: str, sha256: str) -> bool:
    try:
        return store.stat(key).sha256 == sha256
    except ObjectNotFound:
        return False


def repoint_rows(engine: Engine, *, from_env: str, to_env: str) -> int:
    """Point every row that names a key under `<from_env>/` at the same key under `<env>/`
    (one transaction per table); the rows repointed."""
    old_root, new_root = env_root(from_env), env_root(to_env)
    if old_root == new_root:
        return 0
    params = {"like": f"{old_root}%", "new": new_root, "cut": len(old_root) + 1}
    rows = 0
    for table in KEYED_TABLES:
        with engine.begin() as conn:
            rows += conn.execute(
                text(
                    f"UPDATE {table} SET object_key = :new || substr(object_key, :cut) "
                    "WHERE object_key LIKE :like"
                ),
                params,
            ).rowcount
    # Archival's record of the audio it moved names keys too (`from` and `to` of each move).
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE archive_batch SET moved_objects = (SELECT jsonb_agg("
                "  (SELECT jsonb_object_agg(k, CASE WHEN k IN ('from', 'to') AND v #>> '{}' "
                "   LIKE :like THEN to_jsonb(:new || substr(v #>> '{}', :cut)) ELSE v END) "
                "   FROM jsonb_each(m) AS e(k, v))) "
                " FROM jsonb_array_elements(moved_objects) AS m) "
                "WHERE jsonb_array_length(moved_objects) > 0"
            ),
            params,
        )
    return rows
