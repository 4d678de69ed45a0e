"""What `stave db status` reports: revision, server and pgvector versions, rows per table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

import stave.models  # noqa: F401  (registers the tables whose rows are counted)
from stave.infra import migrate


def database_status(engine: Engine) -> dict[str, Any]:
    """A JSON-ready summary of the database `engine` points at."""
    url = engine.url
    with engine.connect() as conn:
        server = conn.execute(text("SHOW server_version")).scalar_one()
        pgvector = conn.execute(
            text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
        pgvector_available = conn.execute(
            text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        ).scalar()
        existing = set(inspect(conn).get_table_names())
        counts: dict[str, int | None] = {}
        for table in sorted(SQLModel.metadata.tables):
            # Exact counts: operators read these to check loads, so no planner estimates.
            counts[table] = (
                int(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())
                if table in existing
                else None
            )
        revision = migrate.current_revision(conn)
    head = migrate.head_revision()
    return {
        "database": f"postgresql://{url.username}@{url.host}:{url.port}/{url.database}",
        "server_version": str(server),
        "pgvector_version": pgvector,
        "pgvector_available": pgvector_available,
        "revision": revision,
        "head": head,
        "up_to_date": revision == head,
        "tables": counts,
    }
