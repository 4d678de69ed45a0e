"""Checking each row's own values: a bad value rejects its row, naming the field; the other
rows go on. The same field rules check parameters merged from templates and preferences."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from stave.tasks.intake.fields import COLUMNS, PARAMETERS, BadValue, PromptRow
from stave.tasks.intake.rows import CheckedRow, Rejection, SourceRows


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
    """A row's values through `PromptRow` (the UI form's model): the first wrong field, in
    column order, rejects the row."""
    try:
        row = PromptRow.model_validate({k: v for k, v in values.items() if k in COLUMNS})
    except ValidationError as err:
        raise _RowRejected(*_first_problem(err)) from None
    given = row.model_dump(exclude_none=True)
    fingerprint = json.dumps(
        {k: str(v) for k, v in given.items()}, sort_keys=True, ensure_ascii=False
    )
    return CheckedRow(
        row=number,
        prompt=row.prompt,
        lyrics=row.lyrics,
        parameters={k: given[k] for k in PARAMETERS if k in given},
        user_id=row.user_id,
        style_template=row.style_template,
        parent_revision=row.parent_revision,
        idempotency_key=row.idempotency_key,
        fingerprint=fingerprint,
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
