"""Lifecycle policies: each table declares, beside its class, how long its rows stay hot.

A policy says everything about ageing: the action, the hot period, what travels with a row,
the order in which archived tables go, and any condition beyond age that a row must meet to
leave. The archival flow reads them through `stave.models.lifecycle_policies()`; nothing else
decides what ages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from sqlalchemy import inspect as sa_inspect
from sqlmodel import SQLModel

# archive:   rows older than `hot_days` move to Parquet, with the tables in `travels_with`.
# follow:    never selected on their own; archived together with the row of `follows`.
# keep:      hot forever (configuration, catalogues, manifests of what was archived).
# retention: aged out by their own retention rules (backups: daily / weekly / monthly).
Action = Literal["archive", "follow", "keep", "retention"]

GENERATION_HOT_DAYS = 183


@dataclass(frozen=True)
class LifecyclePolicy:
    action: Action
    hot_days: int | None = None
    timestamp_column: str = "created_at"
    travels_with: tuple[str, ...] = ()
    follows: str | None = None
    # Archive tables go in ascending `archive_order`: a table whose rows others point at goes
    # after them (tasks first; their jobs and prompt revisions once no hot task needs them).
    archive_order: int = 0
    # A further SQL condition on the row (alias `r`) for it to leave: no hot row still needs it.
    # A table with one names each group's rows by id, since this can change while it is written.
    leaves_when: str | None = None
    table: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.action == "archive" and not self.hot_days:
            raise ValueError("an archive policy needs hot_days")
        if self.action == "follow" and not self.follows:
            raise ValueError("a follow policy names the table it follows")


_POLICIES: dict[str, LifecyclePolicy] = {}

M = TypeVar("M", bound=type[SQLModel])


def lifecycle(policy: LifecyclePolicy) -> Callable[[M], M]:
    """Class decorator: attach `policy` to a table model and register it by table name."""

    def attach(model: M) -> M:
        name = str(model.__tablename__)
        bound = replace(policy, table=name)
        mapper = sa_inspect(model)
        if mapper is None or bound.timestamp_column not in mapper.columns:
            raise ValueError(f"{name}: lifecycle column {bound.timestamp_column!r} does not exist")
        model.__lifecycle__ = bound
        _POLICIES[name] = bound
        return model

    return attach


def declared_policies() -> dict[str, LifecyclePolicy]:
    """The policies declared so far, keyed by table name; `stave.models.lifecycle_policies()`
    is the complete set (importing the package declares every table)."""
    return dict(_POLICIES)
