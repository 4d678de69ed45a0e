"""A prompt file put in the object store for a deployment run to read (`file_key`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stave.infra.errors import InvalidInput
from stave.infra.objectstore import ObjectStore
from stave.infra.objectstore.keys import prompts_key
from stave.tasks.intake.check import checked
from stave.tasks.intake.read import read_file
from stave.tasks.intake.rows import CheckedRow, Rejection, Rejections

# Keys remembered for finding repeats while checking; the submission finds repeats further
# apart (it looks every key up in the database), so memory stays flat in the file's size.
KEY_WINDOW = 100_000


@dataclass
class Uploaded:
    file_key: str
    bytes: int
    rows: int
    rejected: list[Rejection] = field(default_factory=list)
    rejected_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_key": self.file_key,
            "bytes": self.bytes,
            "rows": self.rows,
            "rejected": self.rejected_count,
            "rejections": [r.to_dict() for r in self.rejected],
        }


def upload_prompts(
    store: ObjectStore, file: Path, fmt: str | None = None, *, env_name: str
) -> Uploaded:
    """Check the file's rows as a submission would (an operator learns of a bad row now, not
    from a failed run later), then store it as `<env>/prompts/<sha256>.<ext>`: a key made from its
    content, never from its name."""
    source = read_file(file, fmt)
    accepted, rejected, keys = 0, Rejections(), dict[str, int]()
    for item in checked(source.rows(), keys):
        if isinstance(item, CheckedRow):
            accepted += 1
        else:
            rejected.add(item)
        if len(keys) >= KEY_WINDOW:
            keys.clear()
    if not accepted:
        first = f" (first: {rejected.kept[0]})" if rejected.kept else ""
        raise InvalidInput(f"{file}: no row would be accepted{first}; nothing uploaded")
    key = prompts_key(env_name, source.sha256, source.fmt)
    with open(file, "rb") as handle:
        stored = store.put_stream(key, handle)
    return Uploaded(key, stored.size, accepted, rejected.kept, rejected.count)
