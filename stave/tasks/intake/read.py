"""Reading a prompt file (CSV, JSONL, Parquet), an object in the store, or the UI's rows.

A file that cannot be read as its format raises one InvalidInput naming the file and, where it
can, the line; a row that cannot be parsed (a JSONL line that is not JSON) becomes a rejection.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from stave.infra.errors import InvalidInput, first_line
from stave.infra.objectstore import ObjectStore
from stave.tasks.intake.fields import COLUMNS
from stave.tasks.intake.rows import FORMATS, MAX_FILE_BYTES, Rejection, SourceRows


def read_file(path: Path | str, fmt: str | None = None) -> SourceRows:
    """Read a CSV, JSONL or Parquet prompt file (format from `fmt` or the file's extension)."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "jsonl", "parquet"):
        raise InvalidInput(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            "use .csv, .jsonl or .parquet (or --format)"
        )
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InvalidInput(f"{path}: is not a file")
        if size > MAX_FILE_BYTES:
            raise InvalidInput(f"{path}: is {size} bytes; the limit is {MAX_FILE_BYTES}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except PermissionError:
        raise InvalidInput(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory") from None
    return read_data(data, str(path), fmt)


def read_object(store: ObjectStore, key: str, fmt: str | None = None) -> SourceRows:
    """Read a prompt file from the object store (a deployment's `file_key`); errors name the
    key, as they name the path of a local file."""
    fmt = fmt or FORMATS.get(PurePosixPath(key).suffix.lower())
    if fmt not in ("csv", "jsonl", "parquet"):
        raise InvalidInput(
            f"{key}: cannot tell the format from the key's extension; "
            "use .csv, .jsonl or .parquet (or give the format)"
        )
    size = store.stat(key).size  # ObjectNotFound names the key
    if size > MAX_FILE_BYTES:
        raise InvalidInput(f"{key}: is {size} bytes; the limit is {MAX_FILE_BYTES}")
    return read_data(store.get_bytes(key), key, fmt)


def read_data(data: bytes, where: str, fmt: str) -> SourceRows:
    """Parse a prompt file's bytes; `where` names it in every message."""
    if not data.strip():
        raise InvalidInput(f"{where}: is empty")
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt]
    source = reader(data, where)
    source.uri = where
    if not source.rows and not source.unreadable:
        raise InvalidInput(f"{where}: has a header but no rows")
    return source


def rows_from_parameter(rows: Iterable[Mapping[str, Any]]) -> SourceRows:
    """Rows given directly (a flow parameter from the Prefect UI), checked like a file's."""
    listed = list(rows)
    if not listed:
        raise InvalidInput("rows: the list is empty")
    numbered: list[tuple[int, int | None, dict[str, Any]]] = []
    for number, row in enumerate(listed, start=1):
        if not isinstance(row, Mapping):
            raise InvalidInput(f"rows: row {number} is a {type(row).__name__}, not an object")
        numbered.append((number, None, dict(row)))
    _check_columns([str(k) for r in listed for k in r], "rows")
    canonical = json.dumps(listed, sort_keys=True, default=str, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return SourceRows(rows=numbered, sha256=digest, uri=None, fmt="rows")


def _check_columns(columns: Iterable[str], where: str) -> None:
    seen = list(dict.fromkeys(columns))
    if "prompt" not in seen:
        raise InvalidInput(
            f"{where}: no 'prompt' column (columns found: {', '.join(map(repr, seen[:8]))})"
        )
    unknown = [c for c in seen if c not in COLUMNS]
    if unknown:
        raise InvalidInput(
            f"{where}: unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}"
        )


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InvalidInput(
            f"{where}: is not valid UTF-8 (line {line}, byte {err.start}); save it as UTF-8"
        ) from None


def _read_csv(data: bytes, where: str) -> SourceRows:
    # A NUL (or any control character) inside a field rejects that row, where the row checks
    # name the field; the rest of the file goes ahead.
    text = _decode_utf8(data, where)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        header = [h.strip() for h in header]
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise InvalidInput(f"{where}: column {duplicated[0]!r} appears more than once")
        _check_columns(header, where)
        rows: list[tuple[int, int | None, dict[str, Any]]] = []
        unreadable: list[Rejection] = []
        line = reader.line_num
        for values in reader:
            start_line, line = line + 1, reader.line_num
            if not any(v.strip() for v in values):
                continue  # blank line
            number = len(rows) + len(unreadable) + 1
            # Missing trailing fields are empty values; extra ones mean a misquoted comma.
            values = values + [""] * (len(header) - len(values))
            if len(values) != len(header):
                unreadable.append(
                    Rejection(
                        number,
                        "-",
                        f"has {len(values)} fields; the header has {len(header)}",
                        start_line,
                    )
                )
                continue
            rows.append((number, start_line, dict(zip(header, values, strict=True))))
    except csv.Error as err:
        raise InvalidInput(f"{where}: is not valid CSV (line {reader.line_num}: {err})") from None
    digest = hashlib.sha256(data).hexdigest()
    return SourceRows(rows=rows, sha256=digest, uri=where, fmt="csv", unreadable=unreadable)


def _read_jsonl(data: bytes, where: str) -> SourceRows:
    rows: list[tuple[int, int | None, dict[str, Any]]] = []
    unreadable: list[Rejection] = []
    columns: list[str] = []
    number = 0
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        number += 1
        try:
            value = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
        except UnicodeDecodeError:
            reason = "is not valid UTF-8"
            value = None
        except json.JSONDecodeError as err:
            reason = f"is not valid JSON ({err.msg} at column {err.colno})"
            value = None
        else:
            reason = "is not a JSON object"
        if not isinstance(value, dict):
            if number == 1:
                # A first line that is no JSON object: this is not a JSONL file at all.
                raise InvalidInput(f"{where}: line {line_no} {reason}; expected JSON Lines")
            unreadable.append(Rejection(number, "-", reason, line_no))
            continue
        columns.extend(str(k) for k in value)
        rows.append((number, line_no, value))
    _check_columns(columns, where)
    digest = hashlib.sha256(data).hexdigest()
    return SourceRows(rows=rows, sha256=digest, uri=where, fmt="jsonl", unreadable=unreadable)


def _read_parquet(data: bytes, where: str) -> SourceRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise InvalidInput(f"{where}: is not a readable Parquet file ({first_line(err)})") from None
    _check_columns(table.column_names, where)
    if table.num_rows == 0:
        raise InvalidInput(f"{where}: has no rows")
    records = table.to_pylist()
    rows: list[tuple[int, int | None, dict[str, Any]]] = [
        (number, None, record) for number, record in enumerate(records, start=1)
    ]
    return SourceRows(rows=rows, sha256=hashlib.sha256(data).hexdigest(), uri=where, fmt="parquet")
