"""operator reports: which model made which clips, failures per day, prompt histories

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

# Frozen copies (migrations import no application code).
APP = "stave_app"
REPORTING = "stave_reporting"

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Views, not tables: they always answer from the live rows (and from a replica, which has
# them too). Days are UTC.
VIEWS = {
    "report_model_clips": """
        SELECT mv.id AS model_version_id, mv.name, mv.version, mv.checkpoint_sha256,
               (date_trunc('day', a.created_at AT TIME ZONE 'UTC')) AS day,
               count(*) AS clips, sum(a.duration_s) AS seconds_of_audio
        FROM audio_asset a JOIN model_version mv ON mv.id = a.model_version_id
        GROUP BY mv.id, mv.name, mv.version, mv.checkpoint_sha256,
                 date_trunc('day', a.created_at AT TIME ZONE 'UTC')
    """,
    "report_failures_daily": """
        SELECT (date_trunc('day', coalesce(t.finished_at, t.created_at) AT TIME ZONE 'UTC'))
                   AS day,
               t.error_class, t.status, count(*) AS tasks
        FROM generation_task t WHERE t.error_class IS NOT NULL
        GROUP BY 1, 2, 3
    """,
    "report_prompt_history": """
        SELECT r.user_id, r.id AS revision_id, r.parent_id, r.prompt, r.lyrics,
               r.created_at AS revised_at, t.id AS task_id, t.job_id, t.status,
               t.created_at AS task_created_at, a.id AS asset_id, a.object_key, a.duration_s
        FROM prompt_revision r
        LEFT JOIN generation_task t ON t.prompt_revision_id = r.id
        LEFT JOIN audio_asset a ON a.task_id = t.id
    """,
}


def upgrade() -> None:
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")
        # Read-only for everyone: the default privileges would give the app DML on it.
        op.execute(f"REVOKE ALL ON {name} FROM {APP}")
        op.execute(f"GRANT SELECT ON {name} TO {APP}, {REPORTING}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
