"""Reading prompt files and checking every row.

A file that cannot be read as its format (not found, wrong encoding, not CSV, no `prompt`
column, unknown columns, no rows) raises one InvalidInput naming the file and, where it can,
the line. A readable file never fails as a whole because of a bad row: each bad row becomes a
Rejection (row, field, reason) and the other rows go on.

Rows are numbered from 1 in data order (the CSV header is not a row); CSV and JSONL rejections
also carry the line in the file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from stave.infra.errors import InvalidInput, first_line
from stave.models.base import parse_id

if TYPE_CHECKING:
    from stave.infra.objectstore import ObjectStore

COLUMNS = (
    "prompt",
    "lyrics",
    "duration_s",
    "steps",
    "guidance",
    "scheduler",
    "seed",
    "user_id",
    "style_template",
    "parent_revision",
    "idempotency_key",
)
# Generation parameters: these may also come from a style template or a user's preferences.
PARAMETERS = ("duration_s", "steps", "guidance", "scheduler", "seed")
SCHEDULERS = ("euler", "heun")  # generator.sampler.SCHEDULERS, without importing torch here
MAX_SEED = 2**63 - 1
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_FILE_BYTES = 256 * 1024 * 1024

_USER_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


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


class BadValue(ValueError):
    """One field's value is wrong; the message is the reason."""


# -- reading ----------------------------------------------------------------------------------
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


# -- checking ---------------------------------------------------------------------------------
def check_rows(source: SourceRows) -> tuple[list[CheckedRow], list[Rejection]]:
    """Every row's own values checked; duplicates of an idempotency key are rejected."""
    accepted: list[CheckedRow] = []
    rejected: list[Rejection] = list(source.unreadable)
    keys: dict[str, int] = {}
    for number, line, values in source.rows:
        try:
            row = check_row(number, values)
        except _RowRejected as err:
            rejected.append(Rejection(number, err.field, err.reason, line))
            continue
        if row.idempotency_key is not None:
            if row.idempotency_key in keys:
                rejected.append(
                    Rejection(
                        number,
                        "idempotency_key",
                        f"repeats row {keys[row.idempotency_key]}'s key",
                        line,
                    )
                )
                continue
            keys[row.idempotency_key] = number
        accepted.append(row)
    rejected.sort(key=lambda r: r.row)
    return accepted, rejected


class _RowRejected(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def check_row(number: int, values: Mapping[str, Any]) -> CheckedRow:
    parsed: dict[str, Any] = {}
    for name in COLUMNS:
        value = values.get(name)
        if _missing(value):
            continue
        try:
            parsed[name] = PARSERS[name](value)
        except BadValue as err:
            raise _RowRejected(name, str(err)) from None
    if "prompt" not in parsed:
        raise _RowRejected("prompt", "is empty")
    fingerprint = json.dumps(
        {k: str(v) for k, v in parsed.items()}, sort_keys=True, ensure_ascii=False
    )
    return CheckedRow(
        row=number,
        prompt=parsed["prompt"],
        lyrics=parsed.get("lyrics"),
        parameters={k: parsed[k] for k in PARAMETERS if k in parsed},
        user_id=parsed.get("user_id"),
        style_template=parsed.get("style_template"),
        parent_revision=parsed.get("parent_revision"),
        idempotency_key=parsed.get("idempotency_key"),
        fingerprint=fingerprint,
    )


def check_parameters(parameters: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (field, reason) wrong in merged parameters (from templates too), or None."""
    for name in PARAMETERS:
        if name in parameters and parameters[name] is not None:
            try:
                PARSERS[name](parameters[name])
            except BadValue as err:
                return name, str(err)
    return None


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return isinstance(value, float) and math.isnan(value)


def _text(value: Any, *, limit: int, allow: str = "") -> str:
    if not isinstance(value, str):
        raise BadValue(f"must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadValue("is not valid UTF-8 (contains a lone surrogate)") from None
    if len(value) > limit:
        raise BadValue(f"is {len(value)} characters; the limit is {limit}")
    for position, char in enumerate(value):
        if char not in allow and unicodedata.category(char) in ("Cc", "Cs"):
            raise BadValue(f"contains control character U+{ord(char):04X} at position {position}")
    return value


def _prompt(value: Any) -> str:
    text = _text(value, limit=512)
    if not text.strip():
        raise BadValue("is empty")
    return text


def _lyrics(value: Any) -> str:
    return _text(value, limit=4096, allow="\n\r\t")


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise BadValue("must be a number, not true/false")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise BadValue(f"{value.strip()[:40]!r} is not a number") from None
    else:
        raise BadValue(f"must be a number, not {type(value).__name__}")
    if not math.isfinite(number):
        raise BadValue("must be a finite number")
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise BadValue("must be an integer, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    number = _number(value)
    if not number.is_integer() or abs(number) >= 2**53:
        raise BadValue(f"{value!r} is not an integer")
    return int(number)


def _between(low: float, high: float, unit: str = "") -> Any:
    def check(number: float) -> float:
        if not low <= number <= high:
            raise BadValue(f"is {number:g}{unit}; must be {low:g}-{high:g}{unit}")
        return number

    return check


def _duration(value: Any) -> float:
    return float(_between(1, 600, " s")(_number(value)))


def _steps(value: Any) -> int:
    return int(_between(1, 200)(_integer(value)))


def _guidance(value: Any) -> float:
    return float(_between(0, 30)(_number(value)))


def _scheduler(value: Any) -> str:
    name = _text(value, limit=32).strip().lower()
    if name not in SCHEDULERS:
        raise BadValue(f"{name!r} is not a known scheduler ({', '.join(SCHEDULERS)})")
    return name


def _seed(value: Any) -> int:
    seed = _integer(value)
    if not 0 <= seed <= MAX_SEED:
        raise BadValue("must be a 63-bit non-negative integer (0 to 2^63-1)")
    return seed


def _user_id(value: Any) -> str:
    text = _text(value, limit=128).strip()
    if not _USER_ID.match(text):
        raise BadValue("must be 1-128 characters of letters, digits and _ . @ -")
    return text


def _name(value: Any) -> str:
    return _text(value, limit=128).strip()


def _revision(value: Any) -> uuid.UUID:
    try:
        return parse_id(value if isinstance(value, uuid.UUID) else _text(value, limit=64), "")
    except InvalidInput:
        raise BadValue(f"{str(value)[:40]!r} is not an id (a UUID)") from None


PARSERS: dict[str, Any] = {
    "prompt": _prompt,
    "lyrics": _lyrics,
    "duration_s": _duration,
    "steps": _steps,
    "guidance": _guidance,
    "scheduler": _scheduler,
    "seed": _seed,
    "user_id": _user_id,
    "style_template": _name,
    "parent_revision": _revision,
    "idempotency_key": _name,
}
