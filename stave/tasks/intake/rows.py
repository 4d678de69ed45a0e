"""What intake deals in: the columns a prompt file may have, rows as read, rows checked, and
rejections (row, line, field, reason)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

# The columns (and their rules) are PromptRow's fields (fields.py).
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Files are read in passes, never whole, so the limit is not memory's but a sanity bound.
MAX_FILE_BYTES = 1024 * 1024 * 1024
# Rejections kept (on the job, in a summary); beyond this they are counted, not listed.
KEPT_REJECTIONS = 1000


@dataclass(frozen=True)
class Rejection:
    row: int
    field: str
    reason: str
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = f"row {self.row}" + (f" (line {self.line})" if self.line else "")
        return f"{where}, {self.field}: {self.reason}"


# A row as read: (row number from 1, line in the file where known, its values).
RawRow = tuple[int, int | None, dict[str, Any]]


@dataclass
class SourceRows:
    """A prompt file whose format was checked (header, structure, row count), read again row
    by row as often as needed: `rows()` is a fresh pass over the file, never the file in
    memory. A row that cannot even be parsed (a JSONL line that is not JSON, a CSV line with
    too many fields) comes as a Rejection in its place."""

    sha256: str
    uri: str | None
    fmt: str
    count: int  # rows, the unparseable ones included
    passes: Callable[[], Iterator[RawRow | Rejection]] = field(repr=False)

    def rows(self) -> Iterator[RawRow | Rejection]:
        return self.passes()


@dataclass
class Rejections:
    """Rejections as they come: all counted, the first KEPT_REJECTIONS kept, in row order."""

    kept: list[Rejection] = field(default_factory=list)
    count: int = 0

    def add(self, rejection: Rejection) -> None:
        self.count += 1
        if len(self.kept) < KEPT_REJECTIONS:
            self.kept.append(rejection)


@dataclass(frozen=True)
class CheckedRow:
    """A row whose own values all passed; defaults are merged at submission."""

    row: int
    line: int | None
    prompt: str
    lyrics: str | None
    parameters: dict[str, Any]  # only those the row gave
    user_id: str | None
    style_template: str | None
    parent_revision: uuid.UUID | None
    idempotency_key: str | None
    fingerprint: str  # canonical form of the row's values, for derived idempotency keys
