"""Logical backups: pg_dump streamed to the store (dump.py), records (records.py), restore
and drills (restore.py), retention (retention.py), the client tools (tools.py).

A backup is `pg_dump -Fc` of the whole database, streamed from the child's stdout into the
object store (multipart on S3; temporary file then rename on the filesystem store), so no full
copy sits in memory. Row counts for the manifest are taken inside the same snapshot pg_dump
dumps (`pg_export_snapshot` + `--snapshot`), so the drill can compare them exactly.

The store is the catalogue (catalogue.py): a backup is its object plus its manifest there,
found without the database; `backup_record` is a cache rebuilt from the store.

A `backup_record` is `running` while the dump streams and becomes `succeeded` only after the
object and its manifest are written; any failure removes the object and marks the record
`failed` with the cause. A drill verifies the object's sha256 against the record *before*
pg_restore reads a byte, restores into a scratch database, compares row counts and drops it.
"""

from stave.tasks.backup.catalogue import (
    StoredBackup,
    find_backup,
    stored_backups,
    sync_records,
    wal_summary,
)
from stave.tasks.backup.dump import CONTENT_TYPE, run_backup
from stave.tasks.backup.records import (
    get_backup,
    list_backups,
    manifest_key,
    mark_interrupted,
    recorded,
    succeed,
)
from stave.tasks.backup.restore import drill, drop_database, restore
from stave.tasks.backup.retention import apply_base_retention, apply_retention, plan_retention
from stave.tasks.backup.tools import BackupFailed, BackupResult, stream_to_store

__all__ = [
    "CONTENT_TYPE",
    "BackupFailed",
    "BackupResult",
    "StoredBackup",
    "apply_base_retention",
    "apply_retention",
    "drill",
    "drop_database",
    "find_backup",
    "get_backup",
    "list_backups",
    "manifest_key",
    "mark_interrupted",
    "plan_retention",
    "recorded",
    "restore",
    "run_backup",
    "stored_backups",
    "stream_to_store",
    "succeed",
    "sync_records",
    "wal_summary",
]
