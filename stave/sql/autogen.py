"""Autogenerate options shared by sql/env.py and the drift test."""

from __future__ import annotations

from typing import Any

from stave.models.assets import VECTOR_INDEX_PREFIX

# Indexes on expressions, which autogenerate cannot compare: declared in migrations only.
EXPRESSION_INDEXES = frozenset({"ix_generation_task_batch_key"})


def include_object(
    obj: Any,  # noqa: ARG001  (Alembic passes all five, positionally)
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: Any,
) -> bool:
    # Staging tables (`tmp_*`) that flows create and drop are not schema drift, nor are the
    # per-encoder HNSW indexes that tasks/vector_index.py manages at run time.
    if not (reflected and compare_to is None):
        return True
    if type_ == "table":
        return not str(name).startswith("tmp_")
    if type_ == "index":
        return not str(name).startswith(VECTOR_INDEX_PREFIX) and name not in EXPRESSION_INDEXES
    return True
