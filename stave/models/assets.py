"""Published audio and its latent embeddings (one per encoder version) for sounds-alike search."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import BigInteger, CheckConstraint, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from stave.models.base import id_field, timestamp_field
from stave.models.lifecycle import LifecyclePolicy, lifecycle

EMBEDDING_DIM = 512
# Names of the per-encoder HNSW indexes on latent_embedding: built at run time by
# tasks/vector_index.py, so autogenerate (sql/autogen.py) must not take them for drift.
VECTOR_INDEX_PREFIX = "ix_latent_embedding_hnsw_"
# The loudness method of assets measured now (generator.analysis.LOUDNESS_METHOD; a test keeps
# the two equal, since models and the generator do not import each other).
LOUDNESS_METHOD = "bs1770-4"


# One audio object in the store, measured from the file that was written.
@lifecycle(LifecyclePolicy(action="follow", follows="generation_task"))
class AudioAsset(SQLModel, table=True):
    __tablename__ = "audio_asset"
    __table_args__ = (
        CheckConstraint("bytes >= 0 AND sample_rate > 0 AND channels > 0", name="measures"),
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256"),
        Index(None, "user_id", "created_at"),
        Index(None, "model_version_id", "created_at"),
        # Keyset pagination for backfills walks (created_at, id).
        Index(None, "created_at", "id"),
    )

    id: uuid.UUID = id_field()
    task_id: uuid.UUID | None = Field(
        default=None, foreign_key="generation_task.id", ondelete="CASCADE", unique=True
    )
    user_id: str = Field(max_length=128)
    model_version_id: uuid.UUID | None = Field(
        default=None, foreign_key="model_version.id", ondelete="RESTRICT"
    )
    object_key: str = Field(max_length=512, unique=True)
    sha256: str = Field(max_length=64)
    bytes: int = Field(sa_type=BigInteger)
    format: str = Field(max_length=16)
    sample_rate: int
    channels: int
    duration_s: float
    loudness_lufs: float | None = None
    # How loudness_lufs was measured: "bs1770-4" (K-weighted, gated: true LUFS), or
    # "bs1770-unweighted" for assets measured before migration 0008 (gated, no K-weighting).
    loudness_method: str = Field(
        default=LOUDNESS_METHOD, max_length=32, sa_column_kwargs={"server_default": LOUDNESS_METHOD}
    )
    peak_dbfs: float | None = None
    created_at: datetime = timestamp_field()


# A clip's L2-normalised latent vector for one encoder version.
@lifecycle(LifecyclePolicy(action="follow", follows="audio_asset"))
class LatentEmbedding(SQLModel, table=True):
    __tablename__ = "latent_embedding"
    __table_args__ = (
        UniqueConstraint("asset_id", "encoder_version"),
        # No HNSW index here: each encoder version gets its own partial HNSW index
        # (tasks/vector_index.py). Vectors of two encoders live in different spaces, so one
        # mixed graph would only dilute every search; and a backfill of a new version loads its
        # vectors first and builds its index once at the end, far faster than growing it row
        # by row.
    )

    id: uuid.UUID = id_field()
    asset_id: uuid.UUID = Field(foreign_key="audio_asset.id", ondelete="CASCADE")
    encoder_version: str = Field(max_length=64)
    # pgvector hands back numpy arrays; typed Any as pgvector-python's SQLModel example does.
    embedding: Any = Field(sa_type=VECTOR(EMBEDDING_DIM))
    created_at: datetime = timestamp_field()
