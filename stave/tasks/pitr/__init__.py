"""Point-in-time recovery from the object store alone: base backups and recovery to a moment.

Taking base backups is in `base.py`, recovering from them in `recover.py`.

- `take_base_backup` streams `pg_basebackup -Ft -X none` (a tar of the data directory) to the
  object store, from any host; the WAL it needs is archived by the server itself, segment by
  segment, straight to the store (`stave.infra.wal`, the server's `archive_command`).
- `recover` finds the base backup in the store's catalogue (no database needed: the one being
  recovered is gone), checks it and the whole WAL chain after it (walchain.py), restores into a
  new directory and starts a server that replays to the target time, or to the last archived
  segment, and promotes; it returns that server, running on a free loopback port.
- `verify_base` does the same checks without starting anything.
"""

from __future__ import annotations

from stave.tasks.pitr.base import archiving_enabled, take_base_backup
from stave.tasks.pitr.recover import (
    RECOVERY_SHORT,
    RecoveredServer,
    adopt_as_embedded,
    check_embedded_slot,
    recover,
    stop_command,
    verify_base,
)

__all__ = [
    "RECOVERY_SHORT",
    "RecoveredServer",
    "adopt_as_embedded",
    "archiving_enabled",
    "check_embedded_slot",
    "recover",
    "stop_command",
    "take_base_backup",
    "verify_base",
]
