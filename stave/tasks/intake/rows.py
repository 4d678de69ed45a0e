"""What intake deals in: the columns a prompt file may have, rows as read, rows checked, and
rejections (row, line, field, reason)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

# The columns (and their rules) are PromptRow's fields (fields.py).
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_FILE_BYTES = 256 * 1024 * 1024


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


@dataclass
class SourceRows:
    """A prompt file's rows as read, before any check."""

    rows: list[tuple[int, int | None, dict[str, Any]]]  # (row, line, values)
    sha256: str
    uri: str | None
    fmt: str
    # Rows that could not even be parsed (a JSONL line that is not JSON).
    unreadable: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class CheckedRow:
    """A row whose own values all passed; defaults are merged at submission."""

    row: int
    prompt: str
    lyrics: str | None
    parameters: dict[str, Any]  # only those the row gave
    user_id: str | None
    style_template: str | None
    parent_revision: uuid.UUID | None
    idempotency_key: str | None
    fingerprint: str  # canonical form of the row's values, for derived idempotency keys
