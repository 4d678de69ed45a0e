"""latent backfills: backfill_run checkpoints, and one HNSW index per encoder version

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import hashlib
import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GLOBAL_INDEX = "ix_latent_embedding_hnsw_cosine"

# Frozen copies of the index naming rule as it was at this revision (migrations import no
# application code; tasks/vector_index.py keeps the live one, which must name indexes the same).
VECTOR_INDEX_PREFIX = "ix_latent_embedding_hnsw_"
ENCODER_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def check_encoder_version(version: str) -> str:
    if not ENCODER_VERSION.match(version):
        raise ValueError(f"encoder version {version!r}: use letters, digits and . _ : - (<= 64)")
    return version


def index_name(encoder_version: str) -> str:
    check_encoder_version(encoder_version)
    slug = re.sub(r"[^a-z0-9]+", "_", encoder_version.lower()).strip("_")
    digest = hashlib.sha1(encoder_version.encode()).hexdigest()[:8]
    room = 63 - len(VECTOR_INDEX_PREFIX) - len("_new") - len(digest) - 1
    return f"{VECTOR_INDEX_PREFIX}{slug[:room]}_{digest}"


def upgrade() -> None:
    op.create_table(
        "backfill_run",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("encoder_version", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column(
            "params",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("upper_bound", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cursor_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cursor_id", sa.Uuid(), nullable=True),
        sa.Column("planned", sa.BigInteger(), nullable=False),
        sa.Column("written", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.Column(
            "failures",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "stats",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'stopped', 'completed')", name=op.f("ck_backfill_run_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfill_run")),
    )
    op.create_index(op.f("ix_backfill_run_created_at"), "backfill_run", ["created_at"])
    op.create_index(
        op.f("ix_backfill_run_encoder_version_scope"),
        "backfill_run",
        ["encoder_version", "scope"],
        unique=True,
        postgresql_where=sa.text("status <> 'completed'"),
    )

    # Vectors stay in the row (PLAIN) instead of pgvector's default EXTERNAL: a 512-d vector
    # (2,056 bytes) is just over the TOAST threshold, so each row otherwise puts its vector in
    # the TOAST table, an extra heap and index write on every insert and an extra lookup on
    # every read (HNSW builds, exact scans). Float vectors do not compress; three rows still fit
    # a page. Applies to rows written from now on.
    op.execute("ALTER TABLE latent_embedding ALTER COLUMN embedding SET STORAGE PLAIN")

    # The one shared HNSW graph becomes one partial index per encoder version already present
    # (built here, in the migration's transaction: writes to latent_embedding wait meanwhile).
    op.drop_index(GLOBAL_INDEX, table_name="latent_embedding")
    versions = op.get_bind().execute(
        sa.text("SELECT DISTINCT encoder_version FROM latent_embedding")
    )
    for (version,) in versions.all():
        op.execute(
            f"CREATE INDEX {index_name(version)} ON latent_embedding "
            "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
            f"WHERE encoder_version = '{check_encoder_version(version)}'"
        )


def downgrade() -> None:
    names = op.get_bind().execute(
        sa.text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'latent_embedding' "
            "AND indexname LIKE :prefix"
        ),
        {"prefix": VECTOR_INDEX_PREFIX + "%"},
    )
    for (name,) in names.all():
        op.execute(f"DROP INDEX {name}")
    op.execute("ALTER TABLE latent_embedding ALTER COLUMN embedding SET STORAGE EXTERNAL")
    op.create_index(
        GLOBAL_INDEX,
        "latent_embedding",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.drop_index(op.f("ix_backfill_run_encoder_version_scope"), table_name="backfill_run")
    op.drop_index(op.f("ix_backfill_run_created_at"), table_name="backfill_run")
    op.drop_table("backfill_run")
