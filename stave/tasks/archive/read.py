"""Reading the archive: the files archived, and their rows in place (pyarrow.dataset)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.db import plain_row
from stave.infra.errors import InvalidInput, NotFound
from stave.infra.objectstore import ObjectStore
from stave.models import archive_policies
from stave.tasks.archive.groups import members


def list_batches(engine: Engine, table: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, group_id, root_table, table_name, object_key, row_count, checksum, "
                "time_from, time_to, jsonb_array_length(moved_objects) AS moved, created_at, "
                "restored_at FROM archive_batch WHERE status = 'committed' "
                "AND (CAST(:t AS text) IS NULL OR table_name = :t) ORDER BY time_from, table_name"
            ),
            {"t": table},
        ).all()
    return [plain_row(r) for r in rows]


def download(store: ObjectStore, batches: Sequence[dict[str, Any]], into: Path) -> list[Path]:
    paths = []
    for batch in batches:
        path = into / batch["object_key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for chunk in store.iter_chunks(batch["object_key"]):
                handle.write(chunk)
        paths.append(path)
    return paths


_CLAUSE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(=|==|!=|<>|<=|>=|<|>)\s*(.+?)\s*$", re.I)


def parse_where(where: str | None, schema: Any) -> Any:
    """`col op value [and …]` into a pyarrow.dataset filter; one clear error otherwise."""
    import pyarrow as pa  # lazy: off the CLI's start-up path
    import pyarrow.compute as pc

    if not where or not where.strip():
        return None
    expression = None
    for clause in re.split(r"\s+and\s+", where.strip(), flags=re.I):
        match = _CLAUSE.match(clause)
        if not match:
            raise InvalidInput(f"--where: cannot read {clause!r} (use: column op value [and …])")
        name, op, raw = match.groups()
        if name not in schema.names:
            raise InvalidInput(f"--where: no column {name!r} (columns: {', '.join(schema.names)})")
        kind = schema.field(name).type
        value: Any = raw.strip()
        if value[:1] in "'\"" and value[-1:] == value[:1]:
            value = value[1:-1]
        try:
            if pa.types.is_timestamp(kind):
                parsed = datetime.fromisoformat(value)
                value = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            elif pa.types.is_integer(kind):
                value = int(value)
            elif pa.types.is_floating(kind):
                value = float(value)
            elif pa.types.is_boolean(kind):
                value = value.lower() in ("true", "t", "1", "yes")
        except ValueError as err:
            raise InvalidInput(f"--where: {raw!r} is not a value for {name} ({kind})") from err
        field_ = pc.field(name)
        term = {
            "=": field_ == value,
            "==": field_ == value,
            "!=": field_ != value,
            "<>": field_ != value,
            "<": field_ < value,
            "<=": field_ <= value,
            ">": field_ > value,
            ">=": field_ >= value,
        }[op]
        expression = term if expression is None else expression & term
    return expression


def query(
    engine: Engine,
    store: ObjectStore,
    table: str,
    tmp_dir: Path,
    where: str | None = None,
    columns: Sequence[str] | None = None,
) -> Any:
    """Archived rows of `table` (committed, not restored) as a pyarrow Table, filtered with
    pyarrow.dataset; nothing is restored."""
    import pyarrow.dataset as ds  # lazy: it imports pandas (a quarter of a second)

    known = {m.table for p in archive_policies() for m in members(p)}
    if table not in known:
        raise InvalidInput(f"{table} is not archived by any policy ({', '.join(sorted(known))})")
    batches = [b for b in list_batches(engine, table) if b["restored_at"] is None]
    if not batches:
        raise NotFound(f"nothing of {table} is archived (stave archive list)")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as scratch:
        paths = download(store, batches, Path(scratch))
        dataset = ds.dataset([str(p) for p in paths], format="parquet")
        return dataset.to_table(
            columns=list(columns) if columns else None, filter=parse_where(where, dataset.schema)
        )
