"""A prompt file put in the object store for a deployment run to read (`file_key`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stave.infra.errors import InvalidInput
from stave.infra.objectstore import ObjectStore
from stave.infra.objectstore.keys import prompts_key
from stave.tasks.intake.check import check_rows
from stave.tasks.intake.read import read_file
from stave.tasks.intake.rows import Rejection


@dataclass
class Uploaded:
    file_key: str
    bytes: int
    rows: int
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_key": self.file_key,
            "bytes": self.bytes,
            "rows": self.rows,
            "rejected": len(self.rejected),
            "rejections": [r.to_dict() for r in self.rejected],
        }


def upload_prompts(
    store: ObjectStore, file: Path, fmt: str | None = None, *, env_name: str
) -> Uploaded:
    """Check the file's rows as a submission would (an operator learns of a bad row now, not
    from a failed run later), then store it as `<env>/prompts/<sha256>.<ext>`: a key made from its
    content, never from its name."""
    source = read_file(file, fmt)
    checked, rejected = check_rows(source)
    if not checked:
        first = f" (first: {rejected[0]})" if rejected else ""
        raise InvalidInput(f"{file}: no row would be accepted{first}; nothing uploaded")
    key = prompts_key(env_name, source.sha256, source.fmt)
    with open(file, "rb") as handle:
        stored = store.put_stream(key, handle)
    return Uploaded(key, stored.size, len(checked), rejected)
