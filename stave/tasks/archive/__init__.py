"""Six-month archival: old rows to Parquet in the object store, verified, then deleted.

What ages is declared on the models (`stave.models.archive_policies()`): each `archive` table
is a root; its `travels_with` tables go with each root row (a task with its events, its asset
and the asset's embeddings). A group of files is archived in four durable steps:

1. `prepare` (groups.py): the root rows (one month, up to a batch) are chosen and an
   `archive_batch` row per file is committed with status `writing`, naming every object that
   will be written. A root whose rows age on their timestamp alone is cut into key ranges,
   `(created_at, id)` from the group's first row to its last; one with a further condition
   (`leaves_when`: a job no hot task points at) names its rows by id.
2. `write` (steps.py): each table's rows stream out of PostgreSQL (binary `COPY … TO STDOUT`
   decoded into Arrow by the ADBC driver, infra/pgarrow.py) into a zstd Parquet file one
   record batch at a time, so memory does not grow with the group, and up to the store; audio
   objects are copied to the archive prefix and verified.
3. `verify`: each file is read back from the store: its row count and a digest of its primary
   keys (digest.py) must match what was written.
4. `commit`: one transaction deletes exactly the archived rows (counts must match, or nothing
   is deleted) and marks the files `committed`; the hot audio objects are deleted after it.
   When every foreign key into the group comes from the group's own tables, the deletes run
   with the row-by-row foreign-key triggers off: the traveller tables are locked against
   writes first, so a row referring to the group that commits meanwhile is counted, not
   orphaned.

`process_group` is steps 2 to 4, the one path the CLI, the weekly flow and the benchmark all take.
A crash before 4 leaves `writing` rows: the next run removes their files (recovery.py) and
starts over, so nothing is lost or archived twice. A crash after 4 can leave hot audio objects
no record points to, which `stave gc` removes. Archived rows are read in place (read.py) or
put back (restore.py). No Prefect here.
"""

from stave.tasks.archive.digest import KeyDigest, checksum
from stave.tasks.archive.groups import (
    ArchiveBusy,
    ArchiveConflict,
    Column,
    Group,
    Member,
    columns_of,
    count_eligible,
    cutoff_for,
    members,
    prepare,
)
from stave.tasks.archive.read import list_batches, parse_where, query
from stave.tasks.archive.recovery import clean_unfinished
from stave.tasks.archive.restore import restore
from stave.tasks.archive.run import Plan, RunResult, exclusive, plan, run_archive
from stave.tasks.archive.steps import (
    RunContext,
    arrow_source,
    commit,
    fast_delete_allowed,
    group_is_closed,
    process_group,
    read_keys,
    verify,
    write,
)

__all__ = [
    "ArchiveBusy",
    "ArchiveConflict",
    "Column",
    "Group",
    "KeyDigest",
    "Member",
    "Plan",
    "RunContext",
    "RunResult",
    "arrow_source",
    "checksum",
    "clean_unfinished",
    "columns_of",
    "commit",
    "count_eligible",
    "cutoff_for",
    "exclusive",
    "fast_delete_allowed",
    "group_is_closed",
    "list_batches",
    "members",
    "parse_where",
    "plan",
    "prepare",
    "process_group",
    "query",
    "read_keys",
    "restore",
    "run_archive",
    "verify",
    "write",
]
