"""SQLModel tables, one module per aggregate; importing this package registers every table."""

from stave.models.assets import EMBEDDING_DIM, AudioAsset, LatentEmbedding
from stave.models.catalog import ModelVersion, StyleTemplate, UserPreference
from stave.models.generation import (
    PRIORITIES,
    GenerationJob,
    GenerationTask,
    Priority,
    PromptRevision,
    TaskEvent,
    TaskStatus,
)
from stave.models.lifecycle import LifecyclePolicy, declared_policies
from stave.models.operations import (
    ArchiveBatch,
    BackfillRun,
    BackupRecord,
    DrainRun,
    ValidationRun,
)
from stave.models.queue import QueueStream, UserShare

__all__ = [
    "EMBEDDING_DIM",
    "PRIORITIES",
    "ArchiveBatch",
    "AudioAsset",
    "BackfillRun",
    "BackupRecord",
    "DrainRun",
    "GenerationJob",
    "GenerationTask",
    "LatentEmbedding",
    "LifecyclePolicy",
    "ModelVersion",
    "Priority",
    "PromptRevision",
    "QueueStream",
    "StyleTemplate",
    "TaskEvent",
    "TaskStatus",
    "UserPreference",
    "UserShare",
    "ValidationRun",
    "archive_policies",
    "lifecycle_policies",
    "policy_for",
]


def lifecycle_policies() -> dict[str, LifecyclePolicy]:
    """Every table's policy, keyed by table name (every table module is imported above)."""
    return declared_policies()


def policy_for(table: str) -> LifecyclePolicy:
    policies = lifecycle_policies()
    if table not in policies:
        raise KeyError(f"table {table!r} declares no lifecycle policy")
    return policies[table]


def archive_policies() -> list[LifecyclePolicy]:
    """The tables archival selects rows of, in the order they are archived."""
    archived = [p for p in lifecycle_policies().values() if p.action == "archive"]
    return sorted(archived, key=lambda p: (p.archive_order, p.table))
