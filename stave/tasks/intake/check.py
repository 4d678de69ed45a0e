"""Checking each row's own values: a bad value rejects its row, naming the field; the other
rows go on. The same field rules check parameters merged from templates and preferences."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from json.encoder import encode_basestring
from typing import Any

from pydantic import ValidationError

from stave.tasks.intake.fields import COLUMNS, PARAMETERS, RULES, BadValue, PromptRow
from stave.tasks.intake.rows import CheckedRow, RawRow, Rejection, SourceRows


def check_rows(source: SourceRows) -> tuple[list[CheckedRow], list[Rejection]]:
    """Every row of a (small) source checked, in memory: the accepted rows and the
    rejections, in row order."""
    accepted: list[CheckedRow] = []
    rejected: list[Rejection] = []
    for item in checked(source.rows(), {}):
        if isinstance(item, CheckedRow):
            accepted.append(item)
        else:
            rejected.append(item)
    return accepted, rejected


def checked(
    rows: Iterable[RawRow | Rejection], keys: dict[str, int]
) -> Iterator[CheckedRow | Rejection]:
    """Each row checked as it comes: a CheckedRow, or the Rejection that stops it. A row
    repeating an idempotency key in `keys` (key -> row, filled as rows pass) is rejected; a
    caller bounding its memory clears `keys` and finds repeats further apart another way."""
    for item in rows:
        if isinstance(item, Rejection):
            yield item
            continue
        number, line, values = item
        try:
            row = check_row(number, values, line)
        except _RowRejected as err:
            yield Rejection(number, err.field, err.reason, line)
            continue
        key = row.idempotency_key
        if key is not None:
            if key in keys:
                yield Rejection(number, "idempotency_key", f"repeats row {keys[key]}'s key", line)
                continue
            keys[key] = number
        yield row


class _RowRejected(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


_NOTHING_GIVEN: dict[str, Any] = dict.fromkeys(COLUMNS)


def check_row(number: int, values: Mapping[str, Any], line: int | None = None) -> CheckedRow:
    """A row's values through `PromptRow`'s field rules (the UI form's model): the first wrong
    field, in column order, rejects the row."""
    try:
        # The rules of the columns the row has (a missing value is None whatever the rule);
        # on a failure the model names the first wrong field in column order.
        checked = dict(_NOTHING_GIVEN)
        for field, value in values.items():
            rule = RULES.get(field)
            if rule is not None:
                checked[field] = rule(value)
        if "prompt" not in values:
            checked["prompt"] = RULES["prompt"](None)
    except (ValueError, AssertionError):  # what pydantic turns into a field's error
        try:
            checked = PromptRow.model_validate(
                {k: v for k, v in values.items() if k in COLUMNS}
            ).__dict__
        except ValidationError as err:
            raise _RowRejected(*_first_problem(err)) from None
    given = {k: v for k, v in checked.items() if v is not None}
    return CheckedRow(
        row=number,
        line=line,
        prompt=checked["prompt"],
        lyrics=checked["lyrics"],
        parameters={k: given[k] for k in PARAMETERS if k in given},
        user_id=checked["user_id"],
        style_template=checked["style_template"],
        parent_revision=checked["parent_revision"],
        idempotency_key=checked["idempotency_key"],
        fingerprint=fingerprint(given),
    )


def fingerprint(given: Mapping[str, Any]) -> str:
    """The row's given values as `json.dumps({k: str(v)}, sort_keys=True, ensure_ascii=False)`
    writes them, built directly (a third of the encoder's cost, which it makes anew per call).
    Derived idempotency keys hash this text: it must not change from release to release."""
    return (
        "{"
        + ", ".join(
            f"{encode_basestring(k)}: {encode_basestring(str(given[k]))}" for k in sorted(given)
        )
        + "}"
    )


def check_parameters(parameters: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (field, reason) wrong in merged parameters (from templates too), or None."""
    given = {k: parameters[k] for k in PARAMETERS if parameters.get(k) is not None}
    try:
        PromptRow.model_validate({"prompt": "-", **given})
    except ValidationError as err:
        return _first_problem(err)
    return None


def _first_problem(err: ValidationError) -> tuple[str, str]:
    """(field, reason) of a validation error: the field rule's own words where it spoke."""
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "-"
    if first["type"] == "missing":
        return field, "is empty"
    cause = (first.get("ctx") or {}).get("error")
    return field, str(cause) if isinstance(cause, BadValue) else first["msg"]
