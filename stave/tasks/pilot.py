"""Carrying a pilot into production: a filesystem store's objects into the configured store.

`stave store copy` runs this (docs/production.md, "Moving a pilot"). Every object under the
pilot's `<from_env>/` is copied to the same key under this environment's `<env>/`, its bytes
checked against the sha256 the pilot's store recorded before the next one starts; an object
already there with that sha256 is not copied again, so a rerun finishes an interrupted copy.
The pilot server's own base backups and WAL are left behind: they belong to another cluster,
and recovery in production must never choose them.

Then the records: rows restored from the pilot's dump (`stave backup restore`) still name the
pilot's keys, so every key under `<from_env>/` is repointed to `<env>/` in one transaction per
table. Running the copy again after the restore does that. The pilot's backup records are not
repointed but dropped and rebuilt from the copied manifests (`backup_record` is a cache of the
store): kept, its dump's own row (still `running` in the dump) would later be taken for an
interrupted backup, and its base backups' rows would name objects left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import get_args

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, ObjectCorrupted, ObjectNotFound
from stave.infra.objectstore.base import ChunkReader, ObjectStore
from stave.infra.objectstore.keys import env_root
from stave.infra.settings import Env
from stave.tasks.backup.catalogue import sync_records

ENVIRONMENTS: tuple[str, ...] = get_args(Env)
# The pilot server's physical backups: useless to another cluster, dangerous beside its own.
LEFT_BEHIND = ("backups/base/", "backups/wal/")
# Rows that hold one object key each (backup_record is rebuilt from the store instead).
KEYED_TABLES = ("audio_asset", "archive_batch")


@dataclass
class Carried:
    objects: int = 0
    bytes: int = 0
    already: int = 0
    left_behind: int = 0
    # Copied without a sha256 to check against (the pilot's store lost its record of it; the
    # database's sha256 is checked whenever the object is read).
    unchecked: int = 0
    rows: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def check_environment(env: str, named: str) -> None:
    """Refuse what is not an environment before it names a folder or a key prefix."""
    if env not in ENVIRONMENTS:
        raise InvalidInput(f"{named} {env!r}: one of {', '.join(ENVIRONMENTS)}")


def copy_objects(
    source: ObjectStore,
    target: ObjectStore,
    *,
    from_env: str,
    to_env: str,
    progress: Callable[[int], None] | None = None,
) -> Carried:
    """Copy the pilot's objects (see the module's docstring); `progress` gets bytes. A rotten
    object is skipped and the rest copied; the copy then fails naming how many and the first."""
    check_environment(from_env, "--from-env")
    check_environment(to_env, "STAVE_ENV")
    if source.describe() == target.describe() and from_env == to_env:
        raise InvalidInput(f"{source.describe()} is the configured store itself: nothing to copy")
    tick = progress or (lambda _n: None)
    old_root, new_root = env_root(from_env), env_root(to_env)
    done, rotten = Carried(), []
    for info in source.list(old_root):
        rest = info.key.removeprefix(old_root)
        if rest.startswith(LEFT_BEHIND):
            done.left_behind += 1
            continue
        new = new_root + rest
        expected = info.sha256 or source.stat(info.key).sha256
        if expected is not None and _holds(target, new, expected):
            done.already += 1
            tick(info.size)
            continue
        try:
            stored = _copy_one(source, target, info.key, new, expected, info.content_type)
        except ObjectCorrupted as err:
            rotten.append(str(err))
            continue
        done.objects += 1
        done.unchecked += expected is None
        done.bytes += stored
        tick(info.size)
    if rotten:
        raise ObjectCorrupted(
            f"{len(rotten)} object(s) of the pilot's store did not match their sha256 and were "
            f"not copied (the rest were), e.g. {rotten[0]}"
        )
    return done


def _copy_one(
    source: ObjectStore,
    target: ObjectStore,
    key: str,
    new: str,
    expected: str | None,
    content_type: str,
) -> int:
    """One object, streamed; its bytes checked against `expected` (the source's iterator raises
    after its last chunk, failing the upload) and the copy's digest checked again."""
    chunks = source.iter_chunks(key, expected_sha256=expected)
    stored = target.put_stream(new, ChunkReader(chunks), content_type=content_type)  # type: ignore[arg-type]
    if expected is not None and stored.sha256 != expected:
        target.delete(new)
        raise ObjectCorrupted(
            f"{target.describe()}: the copy of {key} at {new} has sha256 {stored.sha256}, not "
            f"{expected}; removed"
        )
    return stored.size


def _holds(store: ObjectStore, key: str, sha256: str) -> bool:
    try:
        return store.stat(key).sha256 == sha256
    except ObjectNotFound:
        return False


def repoint_rows(engine: Engine, store: ObjectStore, *, from_env: str, to_env: str) -> int:
    """Point every row that names a key under `<from_env>/` at the same key under `<env>/`
    (one transaction per table), and rebuild the backup records from `store`; the rows
    repointed."""
    old_root, new_root = env_root(from_env), env_root(to_env)
    if old_root == new_root:
        return 0
    params = {"old": old_root, "new": new_root, "cut": len(old_root) + 1}
    rows = 0
    for table in KEYED_TABLES:
        with engine.begin() as conn:
            rows += conn.execute(
                text(
                    f"UPDATE {table} SET object_key = :new || substr(object_key, :cut) "
                    "WHERE starts_with(object_key, :old)"
                ),
                params,
            ).rowcount
    # Archival's record of the audio it moved names keys too (`from` and `to` of each move);
    # the array keeps its order, and only rows that name a pilot key are written.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE archive_batch SET moved_objects = (SELECT jsonb_agg(coalesce("
                "  (SELECT jsonb_object_agg(k, CASE WHEN k IN ('from', 'to') AND "
                "   starts_with(v #>> '{}', :old) THEN to_jsonb(:new || substr(v #>> '{}', :cut)) "
                "   ELSE v END) FROM jsonb_each(m) AS e(k, v)), m) ORDER BY i) "
                " FROM jsonb_array_elements(moved_objects) WITH ORDINALITY AS a(m, i)) "
                "WHERE jsonb_array_length(moved_objects) > 0 "
                "AND strpos(moved_objects::text, '\"' || :old) > 0"
            ),
            params,
        )
    with engine.begin() as conn:
        rows += conn.execute(
            text("DELETE FROM backup_record WHERE env = :env"), {"env": from_env}
        ).rowcount
    sync_records(engine, store, to_env)
    return rows
