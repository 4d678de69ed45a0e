"""Shared pieces of every table: ids, timestamps, JSONB, and the constraint naming convention."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import DateTime, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from stave.infra.errors import InvalidInput

# Deterministic constraint and index names, so migrations can refer to them and autogenerate
# compares like with like.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def parse_id(value: str | uuid.UUID, what: str) -> uuid.UUID:
    """An id given as text (a CLI argument, a row's field), or one line naming what it was
    meant to be: "job 'abc' is not an id (a UUID)"."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{what} {str(value)[:40]!r} is not an id (a UUID)") from None


def new_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so B-tree inserts stay at the right edge of the index."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= (rand >> 68) << 64  # 12 random bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def new_id_block(n: int) -> Any:
    """n UUIDv7s as 16-byte strings (numpy `S16`), increasing, for bulk binary COPY.

    Made together rather than one `new_id()` at a time (which costs ~4 µs each: the UUID object,
    not the randomness). RFC 9562 method 1: the 12 bits after the version count up within a
    millisecond; past 4,096 ids the timestamp steps ahead by one, so ids stay unique, ordered.
    """
    step = np.arange(n, dtype=np.uint64)
    millis = np.uint64(time.time_ns() // 1_000_000) + step // np.uint64(4096)
    high = (millis << np.uint64(16)) | np.uint64(0x7000) | (step % np.uint64(4096))
    low = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    low = (low & np.uint64((1 << 62) - 1)) | np.uint64(1 << 63)  # RFC 4122 variant
    packed = np.empty((n, 2), dtype=">u8")
    packed[:, 0], packed[:, 1] = high, low
    return packed.view("S16").reshape(n)


def utcnow() -> datetime:
    return datetime.now(UTC)


def id_field() -> Any:
    return Field(default_factory=new_id, primary_key=True)


def timestamp_field(*, nullable: bool = False, server_default: bool = True) -> Any:
    """A `timestamptz` column; `created_at` is filled by Python and, for raw SQL, by the server."""
    kwargs: dict[str, Any] = {"server_default": text("now()")} if server_default else {}
    if nullable:
        return Field(default=None, sa_type=DateTime(timezone=True), nullable=True)
    return Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        nullable=False,
        sa_column_kwargs=kwargs,
    )


def jsonb_field(*, nullable: bool = False, array: bool = False) -> Any:
    """A JSONB column defaulting to an empty object, or an empty array with `array=True`."""
    if nullable:
        return Field(default=None, sa_type=JSONB, nullable=True)
    empty = "'[]'::jsonb" if array else "'{}'::jsonb"
    return Field(
        default_factory=list if array else dict,
        sa_type=JSONB,
        nullable=False,
        sa_column_kwargs={"server_default": text(empty)},
    )


def check_in(column: str, values: tuple[str, ...]) -> str:
    """SQL for a CHECK that `column` holds one of `values` (status vocabularies)."""
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"
