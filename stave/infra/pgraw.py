"""Raw psycopg beside SQLAlchemy: a pooled connection's driver, client-side binding, binary COPY.

Bulk paths (binary COPY in and out, the Arrow reader) speak psycopg directly; these are the
pieces they share, so each does not borrow connections or frame COPY streams its own way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

# PostgreSQL's binary COPY framing: signature, flags (none), header extension length (0) ...
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
# ... and the trailer (a field count of -1).
COPY_TRAILER = b"\xff\xff"


@contextmanager
def driver_connection(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection borrowed from `engine`'s pool (pgvector registered on it),
    returned to the pool when the block ends; the caller commits."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        yield conn
    finally:
        raw.close()


def psycopg_placeholders(sql: str, params: dict[str, Any]) -> str:
    """SQLAlchemy's `:name` placeholders as psycopg's `%(name)s` (casts' `::` left alone)."""
    for name in params:
        sql = re.sub(rf"(?<![:\w]):{name}\b", f"%({name})s", sql)
    return sql


def inline(engine: Engine, sql: str, params: dict[str, Any]) -> str:
    """`sql` with its `:name` parameters as quoted literals (psycopg's client-side binding),
    for drivers that read an unbound statement faster than a bound one."""
    with driver_connection(engine) as conn, psycopg.ClientCursor(conn) as cur:
        return cur.mogrify(psycopg_placeholders(sql, params), params)


@contextmanager
def copy_in(engine: Engine, sql: str) -> Iterator[psycopg.Copy]:
    """A `COPY … FROM STDIN` on a pooled connection, committed when the block ends."""
    with driver_connection(engine) as conn:
        with conn.cursor() as cur, cur.copy(sql) as copy:
            yield copy
        conn.commit()
