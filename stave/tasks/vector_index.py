"""One HNSW index (cosine) per encoder version, built and rebuilt without blocking writes.

Each index is partial (`WHERE encoder_version = '…'`): vectors of two encoders live in
different spaces, so a shared graph would only dilute every search, and a backfill of a new
version can load its vectors first and build the index once at the end. Builds run
`CONCURRENTLY` on an autocommit connection as the migrator role (which owns the table), so
publishing and searching go on while an index is built or swapped.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.infra.errors import InvalidInput, StaveError
from stave.infra.locks import advisory_lock
from stave.infra.roles import assume_migrator
from stave.infra.settings import Settings
from stave.models.assets import VECTOR_INDEX_PREFIX

# Encoder versions appear in index predicates, so they are held to a strict alphabet.
ENCODER_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_PREDICATE = re.compile(r"encoder_version\)::text = '([^']+)'")
_NEW = "_new"


class IndexPrivilegeError(StaveError):
    """The connected user may not build indexes (it is not a member of the migrator role)."""


@dataclass(frozen=True)
class VectorIndex:
    name: str
    encoder_version: str
    m: int | None
    ef_construction: int | None
    valid: bool
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_encoder_version(version: str) -> str:
    if not ENCODER_VERSION.match(version):
        raise InvalidInput(
            f"encoder version {version!r}: use letters, digits and . _ : - (at most 64)"
        )
    return version


def index_name(encoder_version: str) -> str:
    """A stable name within PostgreSQL's 63 characters, with room for the `_new` suffix."""
    check_encoder_version(encoder_version)
    slug = re.sub(r"[^a-z0-9]+", "_", encoder_version.lower()).strip("_")
    digest = hashlib.sha1(encoder_version.encode()).hexdigest()[:8]
    room = 63 - len(VECTOR_INDEX_PREFIX) - len(_NEW) - len(digest) - 1
    return f"{VECTOR_INDEX_PREFIX}{slug[:room]}_{digest}"


def list_indexes(conn: Connection) -> list[VectorIndex]:
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid), c.reloptions, i.indisvalid, "
            "pg_relation_size(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'latent_embedding'::regclass AND c.relname LIKE :prefix "
            "ORDER BY c.relname"
        ),
        {"prefix": VECTOR_INDEX_PREFIX + "%"},
    ).all()
    found = []
    for name, predicate, options, valid, size in rows:
        match = _PREDICATE.search(predicate or "")
        opts = dict(o.split("=", 1) for o in (options or []))
        found.append(
            VectorIndex(
                name=name,
                encoder_version=match.group(1) if match else "",
                m=int(opts["m"]) if "m" in opts else None,
                ef_construction=int(opts["ef_construction"]) if "ef_construction" in opts else None,
                valid=bool(valid),
                bytes=int(size),
            )
        )
    return found


def index_for(conn: Connection, encoder_version: str) -> VectorIndex | None:
    name = index_name(encoder_version)
    return next((i for i in list_indexes(conn) if i.name == name and i.valid), None)


_seen: dict[tuple[str, str], tuple[bool, float]] = {}
SEEN_FOR_S = 30.0


def has_index(conn: Connection, encoder_version: str) -> bool:
    """Whether the version has a valid index, remembered for a few seconds per process (the
    catalog lookup would otherwise cost as much as a search). Builds here forget it at once."""
    key = (str(conn.engine.url), encoder_version)
    now = time.monotonic()
    seen = _seen.get(key)
    if seen is None or now - seen[1] > SEEN_FOR_S:
        seen = (index_for(conn, encoder_version) is not None, now)
        _seen[key] = seen
    return seen[0]


def ensure_index(engine: Engine, encoder_version: str, settings: Settings) -> bool:
    """Build the version's index if it has none; True when one was built."""
    with engine.connect() as conn:
        if index_for(conn, encoder_version) is not None:
            return False
    rebuild(engine, encoder_version, settings)
    return True


_ensured: set[tuple[str, str]] = set()


def ensure_index_once(engine: Engine, encoder_version: str, settings: Settings) -> str | None:
    """Best effort, once per process and version: a worker publishing a new encoder version's
    vectors gives it an index. Returns a warning when it may not (the app role has no DDL):
    search still works then, by exact scan, until `stave index rebuild` is run."""
    key = (str(engine.url), encoder_version)
    if key in _ensured:
        return None
    try:
        ensure_index(engine, encoder_version, settings)
    except IndexPrivilegeError:
        return (
            f"no HNSW index for encoder {encoder_version} and no right to build one: "
            f"run `stave index rebuild --encoder {encoder_version}` as the migrator"
        )
    finally:
        _ensured.add(key)
    return None


def rebuild(engine: Engine, encoder_version: str, settings: Settings) -> VectorIndex:
    """(Re)build the version's index with the configured m and ef_construction, concurrently.

    The new index is built beside the old one under a temporary name, then the old one is
    dropped and the new one renamed, so searches keep an index throughout. A leftover from an
    interrupted rebuild (an invalid `_new` index) is dropped first.
    """
    name = index_name(encoder_version)
    building = name + _NEW
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if not assume_migrator(conn) and not _owns_table(conn):
            raise IndexPrivilegeError(
                "building a vector index needs the table owner: connect as a member of "
                "stave_migrator (or run `stave index rebuild` as the migrator)"
            )
        # The graph is built in memory when it fits (much faster than spilling to disk).
        conn.execute(text(f"SET maintenance_work_mem = '{int(settings.hnsw_build_memory_mb)}MB'"))
        # Two builders of the same index wait for each other rather than collide.
        try:
            with advisory_lock(conn, f"stave/vector-index/{name}"):
                _build(conn, name, building, encoder_version, settings)
        finally:
            conn.execute(text("RESET ROLE"))
            conn.execute(text("RESET maintenance_work_mem"))
        built = next(i for i in list_indexes(conn) if i.name == name)
    _seen.pop((str(engine.url), encoder_version), None)
    return built


def _build(
    conn: Connection, name: str, building: str, encoder_version: str, settings: Settings
) -> None:
    """Build the index beside the old one, then swap them (searches keep an index)."""
    conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {building}"))
    conn.execute(
        text(
            f"CREATE INDEX CONCURRENTLY {building} ON latent_embedding "
            "USING hnsw (embedding vector_cosine_ops) "
            f"WITH (m = {int(settings.hnsw_m)}, "
            f"ef_construction = {int(settings.hnsw_ef_construction)}) "
            f"WHERE encoder_version = '{check_encoder_version(encoder_version)}'"
        )
    )
    conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
    conn.execute(text(f"ALTER INDEX {building} RENAME TO {name}"))


def _owns_table(conn: Connection) -> bool:
    return bool(
        conn.execute(
            text(
                "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class "
                "WHERE oid = 'latent_embedding'::regclass"
            )
        ).scalar()
    )
