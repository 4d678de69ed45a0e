"""initial schema, vector extension, roles

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects import postgresql

# Frozen copies of the role names as they were when this revision was written (migrations
# import no application code: a rename there must not rewrite history here).
MIGRATOR = "stave_migrator"
APP = "stave_app"
REPORTING = "stave_reporting"
ALL_ROLES = (MIGRATOR, APP, REPORTING)
APP_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The vector extension is not trusted in pgvector 0.6: it needs a superuser (or a DBA who
    # created it beforehand), so it comes before dropping to the migrator role.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    _create_roles()
    # Everything below is created by, and owned by, the migrator.
    op.execute(f"SET ROLE {MIGRATOR}")
    _create_tables()
    _grant()


def downgrade() -> None:
    _drop_tables()
    op.execute("RESET ROLE")
    _drop_roles()
    op.execute("DROP EXTENSION IF EXISTS vector")


def _create_roles() -> None:
    for role in ALL_ROLES:
        op.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} NOLOGIN; END IF; END $$"
        )
    # The user running migrations acts as the migrator from now on (sql/env.py SETs ROLE).
    # Unless it already may act as the migrator: a login a DBA made a member may not grant
    # the role again without ADMIN on it (PostgreSQL 16 gives a CREATEROLE login ADMIN only
    # over the roles it created). Before 16 any membership allows SET ROLE.
    op.execute(
        "DO $$ BEGIN IF NOT pg_has_role(session_user, 'stave_migrator', CASE WHEN "
        "current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END) "
        f"THEN EXECUTE format('GRANT {MIGRATOR} TO %I', session_user); END IF; END $$"
    )
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {MIGRATOR}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP}, {REPORTING}")
    op.execute(f"ALTER TABLE alembic_version OWNER TO {MIGRATOR}")


def _grant() -> None:
    # Tables created by later migrations get the same privileges by default.
    op.execute(f"GRANT {APP_TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA public TO {APP}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {REPORTING}")
    op.execute(f"REVOKE ALL ON alembic_version FROM {APP}")
    op.execute(f"GRANT SELECT ON alembic_version TO {APP}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public "
        f"GRANT {APP_TABLE_PRIVILEGES} ON TABLES TO {APP}"
    )
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public "
        f"GRANT USAGE, SELECT ON SEQUENCES TO {APP}"
    )
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {MIGRATOR} IN SCHEMA public "
        f"GRANT SELECT ON TABLES TO {REPORTING}"
    )


def _drop_roles() -> None:
    op.execute("ALTER TABLE alembic_version OWNER TO SESSION_USER")
    for role in ALL_ROLES:
        # Revokes this database's grants and default privileges of the role. One role per
        # statement: a default ACL shared by two listed roles makes PostgreSQL fail.
        op.execute(f"DROP OWNED BY {role}")
    for role in ALL_ROLES:
        # Roles are cluster-wide: another database migrated by Stave may still use them.
        op.execute(
            f"DO $$ BEGIN DROP ROLE IF EXISTS {role}; "
            f"EXCEPTION WHEN dependent_objects_still_exist THEN "
            f"RAISE NOTICE 'role {role} kept: other databases use it'; END $$"
        )


def _create_tables() -> None:
    op.create_table(
        "archive_batch",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("table_name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("object_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("time_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "moved_objects",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("restored_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archive_batch")),
        sa.UniqueConstraint("object_key", name=op.f("uq_archive_batch_object_key")),
    )
    op.create_index(
        op.f("ix_archive_batch_table_name_time_from"),
        "archive_batch",
        ["table_name", "time_from"],
        unique=False,
    )
    op.create_table(
        "backup_record",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("env", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("object_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("server_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column(
            "manifest",
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
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('dump', 'base')", name=op.f("ck_backup_record_kind")),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name=op.f("ck_backup_record_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_record")),
        sa.UniqueConstraint("object_key", name=op.f("uq_backup_record_object_key")),
    )
    op.create_index(
        op.f("ix_backup_record_status_created_at"),
        "backup_record",
        ["status", "created_at"],
        unique=False,
    )
    op.create_table(
        "generation_job",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("submitted_by", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("source_uri", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
        sa.Column("source_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column(
            "parameters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("total_rows", sa.Integer(), nullable=False),
        sa.Column("accepted_rows", sa.Integer(), nullable=False),
        sa.Column("rejected_rows", sa.Integer(), nullable=False),
        sa.Column(
            "rejections",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_job")),
    )
    op.create_index(
        op.f("ix_generation_job_source_sha256"), "generation_job", ["source_sha256"], unique=False
    )
    op.create_index(
        op.f("ix_generation_job_submitted_by_created_at"),
        "generation_job",
        ["submitted_by", "created_at"],
        unique=False,
    )
    op.create_table(
        "model_version",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("checkpoint_uri", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("checkpoint_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "config",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("code_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_version_name_version")),
    )
    op.create_table(
        "prompt_revision",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("prompt", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("lyrics", sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["prompt_revision.id"],
            name=op.f("fk_prompt_revision_parent_id_prompt_revision"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_revision")),
    )
    op.create_index(
        op.f("ix_prompt_revision_parent_id"), "prompt_revision", ["parent_id"], unique=False
    )
    op.create_index(
        op.f("ix_prompt_revision_user_id_created_at"),
        "prompt_revision",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "style_template",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column(
            "parameters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_style_template")),
        sa.UniqueConstraint("name", name=op.f("uq_style_template_name")),
    )
    op.create_table(
        "user_preference",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column(
            "parameters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_preference")),
        sa.UniqueConstraint("user_id", name=op.f("uq_user_preference_user_id")),
    )
    op.create_table(
        "generation_task",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("prompt_revision_id", sa.Uuid(), nullable=True),
        sa.Column("prompt", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("lyrics", sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=True),
        sa.Column(
            "parameters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("device", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("error_class", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("model_version_id", sa.Uuid(), nullable=True),
        sa.Column(
            "timings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "error_class IS NULL OR error_class IN ('input_invalid', 'resource_exhausted', 'storage_unavailable', 'model_error', 'validation_failed', 'timeout', 'internal')",
            name=op.f("ck_generation_task_error_class"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'published', 'quarantined', 'failed', 'cancelled')",
            name=op.f("ck_generation_task_status"),
        ),
        sa.CheckConstraint(
            "attempts >= 0 AND max_attempts >= 1", name=op.f("ck_generation_task_attempts")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_job.id"],
            name=op.f("fk_generation_task_job_id_generation_job"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_generation_task_model_version_id_model_version"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_revision_id"],
            ["prompt_revision.id"],
            name=op.f("fk_generation_task_prompt_revision_id_prompt_revision"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_task")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_generation_task_idempotency_key")),
    )
    op.create_index(op.f("ix_generation_task_job_id"), "generation_task", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_generation_task_model_version_id_created_at"),
        "generation_task",
        ["model_version_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_generation_task_pending",
        "generation_task",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        op.f("ix_generation_task_prompt_revision_id"),
        "generation_task",
        ["prompt_revision_id"],
        unique=False,
    )
    op.create_index(
        "ix_generation_task_running_lease",
        "generation_task",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        op.f("ix_generation_task_user_id_created_at"),
        "generation_task",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "validation_run",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("suite", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("batch_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column(
            "statistics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "failed_expectations",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["generation_job.id"],
            name=op.f("fk_validation_run_job_id_generation_job"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validation_run")),
    )
    op.create_index(
        op.f("ix_validation_run_job_id_created_at"),
        "validation_run",
        ["job_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "audio_asset",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("model_version_id", sa.Uuid(), nullable=True),
        sa.Column("object_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("format", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("sample_rate", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("loudness_lufs", sa.Float(), nullable=True),
        sa.Column("peak_dbfs", sa.Float(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_audio_asset_sha256")),
        sa.CheckConstraint(
            "bytes >= 0 AND sample_rate > 0 AND channels > 0", name=op.f("ck_audio_asset_measures")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_audio_asset_model_version_id_model_version"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["generation_task.id"],
            name=op.f("fk_audio_asset_task_id_generation_task"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audio_asset")),
        sa.UniqueConstraint("object_key", name=op.f("uq_audio_asset_object_key")),
        sa.UniqueConstraint("task_id", name=op.f("uq_audio_asset_task_id")),
    )
    op.create_index(
        op.f("ix_audio_asset_created_at_id"), "audio_asset", ["created_at", "id"], unique=False
    )
    op.create_index(
        op.f("ix_audio_asset_model_version_id_created_at"),
        "audio_asset",
        ["model_version_id", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_audio_asset_user_id_created_at"),
        "audio_asset",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "task_event",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("from_status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("to_status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["generation_task.id"],
            name=op.f("fk_task_event_task_id_generation_task"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_event")),
    )
    op.create_index(
        op.f("ix_task_event_task_id_created_at"),
        "task_event",
        ["task_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "latent_embedding",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("encoder_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("embedding", pgvector.sqlalchemy.vector.VECTOR(dim=512), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["audio_asset.id"],
            name=op.f("fk_latent_embedding_asset_id_audio_asset"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_latent_embedding")),
        sa.UniqueConstraint(
            "asset_id", "encoder_version", name=op.f("uq_latent_embedding_asset_id_encoder_version")
        ),
    )
    op.create_index(
        "ix_latent_embedding_hnsw_cosine",
        "latent_embedding",
        ["embedding"],
        unique=False,
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


def _drop_tables() -> None:
    op.drop_index(
        "ix_latent_embedding_hnsw_cosine",
        table_name="latent_embedding",
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.drop_table("latent_embedding")
    op.drop_index(op.f("ix_task_event_task_id_created_at"), table_name="task_event")
    op.drop_table("task_event")
    op.drop_index(op.f("ix_audio_asset_user_id_created_at"), table_name="audio_asset")
    op.drop_index(op.f("ix_audio_asset_model_version_id_created_at"), table_name="audio_asset")
    op.drop_index(op.f("ix_audio_asset_created_at_id"), table_name="audio_asset")
    op.drop_table("audio_asset")
    op.drop_index(op.f("ix_validation_run_job_id_created_at"), table_name="validation_run")
    op.drop_table("validation_run")
    op.drop_index(op.f("ix_generation_task_user_id_created_at"), table_name="generation_task")
    op.drop_index(
        "ix_generation_task_running_lease",
        table_name="generation_task",
        postgresql_where=sa.text("status = 'running'"),
    )
    op.drop_index(op.f("ix_generation_task_prompt_revision_id"), table_name="generation_task")
    op.drop_index(
        "ix_generation_task_pending",
        table_name="generation_task",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index(
        op.f("ix_generation_task_model_version_id_created_at"), table_name="generation_task"
    )
    op.drop_index(op.f("ix_generation_task_job_id"), table_name="generation_task")
    op.drop_table("generation_task")
    op.drop_table("user_preference")
    op.drop_table("style_template")
    op.drop_index(op.f("ix_prompt_revision_user_id_created_at"), table_name="prompt_revision")
    op.drop_index(op.f("ix_prompt_revision_parent_id"), table_name="prompt_revision")
    op.drop_table("prompt_revision")
    op.drop_table("model_version")
    op.drop_index(op.f("ix_generation_job_submitted_by_created_at"), table_name="generation_job")
    op.drop_index(op.f("ix_generation_job_source_sha256"), table_name="generation_job")
    op.drop_table("generation_job")
    op.drop_index(op.f("ix_backup_record_status_created_at"), table_name="backup_record")
    op.drop_table("backup_record")
    op.drop_index(op.f("ix_archive_batch_table_name_time_from"), table_name="archive_batch")
    op.drop_table("archive_batch")
