"""Checking each row's own values: a bad value rejects its row, naming the field; the other
rows go on. The same field rules check parameters merged from templates and preferences."""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping
from typing import Any

from stave.infra.errors import InvalidInput
from stave.models.base import parse_id
from stave.tasks.intake.rows import (
    COLUMNS,
    MAX_SEED,
    PARAMETERS,
    SCHEDULERS,
    CheckedRow,
    Rejection,
    SourceRows,
)

_USER_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


class BadValue(ValueError):
    """One field's value is wrong; the message is the reason."""


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
