"""The server's WAL archiver, as its own statistics describe it (`pg_stat_archiver`): read by
the base backup (which refuses a failing archiver) and by the metrics (which alert on one)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class ArchiverStatus:
    mode: str  # archive_mode: off | on | always
    last_archived: datetime | None
    last_failed: datetime | None
    last_failed_wal: str | None

    @property
    def on(self) -> bool:
        return self.mode != "off"

    @property
    def failing(self) -> bool:
        """The latest attempt failed (segments pile up in pg_wal until it works again)."""
        return self.last_failed is not None and (
            self.last_archived is None or self.last_failed > self.last_archived
        )


def archiver_status(conn: Connection) -> ArchiverStatus:
    mode = conn.execute(text("SHOW archive_mode")).scalar_one()
    row = conn.execute(
        text("SELECT last_archived_time, last_failed_time, last_failed_wal FROM pg_stat_archiver")
    ).one()
    return ArchiverStatus(mode, row.last_archived_time, row.last_failed_time, row.last_failed_wal)
