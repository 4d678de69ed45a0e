"""SQLModel tables, one module per aggregate; importing this package registers every table."""

from models.assets import EMBEDDING_DIM, AudioAsset, LatentEmbedding
from models.catalog import ModelVersion, StyleTemplate, UserPreference
from models.generation import (
    ERROR_CLASSES,
    GenerationJob,
    GenerationTask,
    PromptRevision,
    TaskEvent,
    TaskStatus,
)
from models.lifecycle import LifecyclePolicy, lifecycle_policies, policy_for
from models.operations import ArchiveBatch, BackfillRun, BackupRecord, ValidationRun

__all__ = [
    "EMBEDDING_DIM",
    "ERROR_CLASSES",
    "ArchiveBatch",
    "AudioAsset",
    "BackfillRun",
    "BackupRecord",
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
    "lifecycle_policies",
    "policy_for",
]
