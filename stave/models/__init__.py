"""SQLModel tables, one module per aggregate; importing this package registers every table."""

from stave.models.assets import EMBEDDING_DIM, AudioAsset, LatentEmbedding
from stave.models.catalog import ModelVersion, StyleTemplate, UserPreference
from stave.models.generation import (
    GenerationJob,
    GenerationTask,
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

__all__ = [
    "EMBEDDING_DIM",
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
    "PromptRevision",
    "StyleTemplate",
    "TaskEvent",
    "TaskStatus",
    "UserPreference",
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
