"""PostgreSQL advisory locks: the one way Stave says "one at a time" across processes.

Session-level locks on a connection of the caller's: they are released when the block ends,
and with the connection if its process dies, so a crash never leaves a lock behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection

from stave.infra.errors import StaveError


def lock_key(name: str) -> int:
    """A stable 60-bit key for a lock's name (PostgreSQL's advisory keys are bigints)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


@contextmanager
def advisory_lock(conn: Connection, name: str, *, busy: StaveError | None = None) -> Iterator[None]:
    """Hold the lock `name` on `conn` for the block.

    With `busy`, try once and raise it when another session holds the lock (a second run of
    the same job is told so at once); without, wait for the holder to finish.
    """
    key = lock_key(name)
    if busy is None:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
    elif not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
        conn.rollback()
        raise busy
    conn.commit()
    try:
        yield
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
