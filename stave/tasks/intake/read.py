"""Reading a prompt file (CSV, JSONL, Parquet), an object in the store, or the UI's rows.

A file is read in passes, never held whole: a first pass takes its sha256 and checks its
format (header, columns, structure, that it has rows) and counts its rows, so a file that
cannot be read as its format raises one InvalidInput naming the file and, where it can, the
line, before anything is written; each later pass (`SourceRows.rows()`) yields its rows one
by one. A row that cannot be parsed (a JSONL line that is not JSON) becomes a rejection.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from stave.infra.errors import InvalidInput, first_line
from stave.infra.objectstore import ObjectStore
from stave.tasks.intake.fields import COLUMNS
from stave.tasks.intake.rows import FORMATS, MAX_FILE_BYTES, RawRow, Rejection, SourceRows

PARQUET_BATCH = 4096


def read_file(path: Path | str, fmt: str | None = None) -> SourceRows:
    """A CSV, JSONL or Parquet prompt file (format from `fmt` or the file's extension)."""
    path = Path(path)
    fmt = _format(
        fmt, path.suffix, str(path), "extension {!r}; use .csv, .jsonl or .parquet (or --format)"
    )
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InvalidInput(f"{path}: is not a file")
        if size > MAX_FILE_BYTES:
            raise InvalidInput(f"{path}: is {size} bytes; the limit is {MAX_FILE_BYTES}")
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except PermissionError:
        raise InvalidInput(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory") from None
    if size == 0:
        raise InvalidInput(f"{path}: is empty")
    return _READERS[fmt](path, str(path), digest)


@contextmanager
def read_object(store: ObjectStore, key: str, fmt: str | None = None) -> Iterator[SourceRows]:
    """A prompt file in the object store (a deployment's `file_key`), spooled to a temporary
    file (its sha256 checked on the way) for as long as the block runs; errors name the key,
    as they name the path of a local file."""
    suffix = PurePosixPath(key).suffix
    fmt = _format(
        fmt, suffix, key, "key's extension; use .csv, .jsonl or .parquet (or give the format)"
    )
    size = store.stat(key).size  # ObjectNotFound names the key
    if size > MAX_FILE_BYTES:
        raise InvalidInput(f"{key}: is {size} bytes; the limit is {MAX_FILE_BYTES}")
    with tempfile.NamedTemporaryFile(prefix="stave-prompts-", suffix=suffix) as spool:
        digest = hashlib.sha256()
        for chunk in store.iter_chunks(key):
            digest.update(chunk)
            spool.write(chunk)
        spool.flush()
        if size == 0:
            raise InvalidInput(f"{key}: is empty")
        yield _READERS[fmt](Path(spool.name), key, digest.hexdigest())


def rows_from_parameter(rows: Iterable[Mapping[str, Any]]) -> SourceRows:
    """Rows given directly (a flow parameter from the Prefect UI), checked like a file's."""
    listed = list(rows)
    if not listed:
        raise InvalidInput("rows: the list is empty")
    numbered: list[RawRow] = []
    for number, row in enumerate(listed, start=1):
        if not isinstance(row, Mapping):
            raise InvalidInput(f"rows: row {number} is a {type(row).__name__}, not an object")
        numbered.append((number, None, dict(row)))
    _check_columns([str(k) for r in listed for k in r], "rows")
    canonical = json.dumps(listed, sort_keys=True, default=str, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return SourceRows(digest, None, "rows", len(numbered), lambda: iter(numbered))


def _format(fmt: str | None, suffix: str, where: str, hint: str) -> str:
    fmt = fmt or FORMATS.get(suffix.lower())
    if fmt not in ("csv", "jsonl", "parquet"):
        raise InvalidInput(f"{where}: cannot tell the format from the " + hint.format(suffix))
    return fmt


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


def _no_rows(count: int, where: str) -> None:
    if count == 0:
        raise InvalidInput(f"{where}: has a header but no rows")


def _text_lines(path: Path, where: str) -> Iterator[str]:
    """The file's lines as text, each decoded alone: a bad byte is named by line and offset
    without the file in memory."""
    with open(path, "rb") as handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise InvalidInput(
                    f"{where}: is not valid UTF-8 (line {number}, byte {offset + err.start}); "
                    "save it as UTF-8"
                ) from None
            offset += len(raw)


def _csv_records(
    path: Path, where: str, lines: Iterable[str] | None = None
) -> Iterator[tuple[list[str], int, list[str]]]:
    """(header, first line, fields) of each non-blank record; format errors raise."""
    # A NUL (or any control character) inside a field rejects that row, where the row checks
    # name the field; the rest of the file goes ahead.
    reader = csv.reader(_text_lines(path, where) if lines is None else lines, strict=True)
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise InvalidInput(f"{where}: is empty")
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise InvalidInput(f"{where}: column {duplicated[0]!r} appears more than once")
        _check_columns(header, where)
        line = reader.line_num
        for values in reader:
            start_line, line = line + 1, reader.line_num
            if "".join(values).strip():  # else a blank line
                yield header, start_line, values
    except csv.Error as err:
        raise InvalidInput(f"{where}: is not valid CSV (line {reader.line_num}: {err})") from None


def _read_csv(path: Path, where: str, digest: str) -> SourceRows:
    try:
        # Decoded in large blocks (a third of the cost of line by line); only a file that is
        # not UTF-8 is read again line by line, to name the line.
        with open(path, encoding="utf-8-sig", newline="") as text:
            count = sum(1 for _ in _csv_records(path, where, text))
    except UnicodeDecodeError:
        count = sum(1 for _ in _csv_records(path, where))
    _no_rows(count, where)

    def rows() -> Iterator[RawRow | Rejection]:
        with open(path, encoding="utf-8-sig", newline="") as text:  # UTF-8: the first pass said
            records = _csv_records(path, where, text)
            for number, (header, line, values) in enumerate(records, start=1):
                # Missing trailing fields are empty values; extra ones mean a misquoted comma.
                if len(values) > len(header):
                    yield Rejection(
                        number, "-", f"has {len(values)} fields; the header has {len(header)}", line
                    )
                    continue
                values = values + [""] * (len(header) - len(values))
                yield number, line, dict(zip(header, values, strict=True))

    return SourceRows(digest, where, "csv", count, rows)


def _jsonl_values(path: Path, where: str) -> Iterator[tuple[int, int, Any, str]]:
    """(row, line, value, why not a row) of each non-blank line: the value is a dict, or
    None with the reason."""
    number = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            number += 1
            try:
                value = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
            except UnicodeDecodeError:
                reason, value = "is not valid UTF-8", None
            except json.JSONDecodeError as err:
                reason, value = f"is not valid JSON ({err.msg} at column {err.colno})", None
            else:
                reason = "is not a JSON object"
            if not isinstance(value, dict):
                if number == 1:
                    # A first line that is no JSON object: this is not a JSONL file at all.
                    raise InvalidInput(f"{where}: line {line_no} {reason}; expected JSON Lines")
                value = None
            yield number, line_no, value, reason


def _read_jsonl(path: Path, where: str, digest: str) -> SourceRows:
    columns: dict[str, None] = {}
    count = 0
    for _, _, value, _ in _jsonl_values(path, where):
        count += 1
        if value is not None:
            columns.update(dict.fromkeys(map(str, value)))
    _check_columns(columns, where)
    _no_rows(count, where)

    def rows() -> Iterator[RawRow | Rejection]:
        for number, line, value, reason in _jsonl_values(path, where):
            yield (
                (number, line, value) if value is not None else Rejection(number, "-", reason, line)
            )

    return SourceRows(digest, where, "jsonl", count, rows)


def _read_parquet(path: Path, where: str, digest: str) -> SourceRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        count = pq.ParquetFile(path).metadata.num_rows
        columns = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise InvalidInput(f"{where}: is not a readable Parquet file ({first_line(err)})") from None
    _check_columns(columns, where)
    if count == 0:
        raise InvalidInput(f"{where}: has no rows")

    def rows() -> Iterator[RawRow | Rejection]:
        number = 0
        try:
            with pq.ParquetFile(path) as parquet:
                for batch in parquet.iter_batches(batch_size=PARQUET_BATCH):
                    for record in batch.to_pylist():
                        number += 1
                        yield number, None, record
        except (pa.ArrowException, OSError) as err:
            raise InvalidInput(
                f"{where}: is not a readable Parquet file (after row {number}: {first_line(err)})"
            ) from None

    return SourceRows(digest, where, "parquet", count, rows)


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
