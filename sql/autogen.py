"""Autogenerate options shared by sql/env.py and the drift test."""

from __future__ import annotations

from typing import Any


def include_object(
    obj: Any,  # noqa: ARG001  (Alembic passes all five, positionally)
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: Any,
) -> bool:
    # Staging tables (`tmp_*`) that flows create and drop are not schema drift.
    return not (
        type_ == "table" and reflected and compare_to is None and str(name).startswith("tmp_")
    )
