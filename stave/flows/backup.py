"""Nightly backup: dump to the object store, restore drill, base backup, retention.

Order matters: a new dump is proven restorable (the drill) before retention may delete older
ones, and retention never deletes the newest verified backup; base backups (point-in-time
recovery, with the WAL the server archives to the store continuously) are pruned with the WAL
they alone needed only after the new one is stored. A failed step fails the flow run with the
cause as its message. The `backup_record` cache is brought in line with the store at the end.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from stave.flows import names
from stave.infra.db import database_url, get_engine
from stave.infra.objectstore import make_object_store
from stave.infra.settings import get_settings
from stave.tasks import backup, pitr


@task(name="dump-database", cache_policy=NO_CACHE)
def dump_database() -> dict[str, Any]:
    settings = get_settings()
    store = make_object_store(settings)
    backup.mark_interrupted(get_engine(), store, older_than=timedelta(hours=12))
    result = backup.run_backup(
        get_engine(), store, url=database_url(settings), env_name=settings.env
    )
    return {
        "id": str(result.id),
        "object_key": result.object_key,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "seconds": round(result.seconds, 2),
        "tables": len(result.manifest["tables"]),
    }


@task(name="restore-drill", cache_policy=NO_CACHE)
def restore_drill(backup_id: str) -> dict[str, Any]:
    settings = get_settings()
    store = make_object_store(settings)
    found = backup.find_backup(store, settings.env, backup_id, kind="dump")
    return backup.drill(get_engine(), store, found.as_record(), url=database_url(settings))


@task(name="apply-retention", cache_policy=NO_CACHE)
def apply_retention() -> list[str]:
    settings = get_settings()
    return backup.apply_retention(
        get_engine(),
        make_object_store(settings),
        env_name=settings.env,
        daily=settings.backup_keep_daily,
        weekly=settings.backup_keep_weekly,
        monthly=settings.backup_keep_monthly,
    )


@task(name="base-backup", cache_policy=NO_CACHE)
def base_backup() -> str | None:
    """A base backup, or None (with a warning) when the server does not archive WAL."""
    settings = get_settings()
    url = database_url(settings)
    if not pitr.archiving_enabled(url):
        get_run_logger().warning(
            "the database does not archive WAL to the store (archive_mode off): no base "
            "backup, so no point-in-time recovery; see `stave backup wal-setup`"
        )
        return None
    return pitr.take_base_backup(
        get_engine(), make_object_store(settings), url=url, env_name=settings.env
    )


@task(name="base-retention", cache_policy=NO_CACHE)
def base_retention() -> dict[str, Any]:
    settings = get_settings()
    return backup.apply_base_retention(
        get_engine(),
        make_object_store(settings),
        env_name=settings.env,
        daily=settings.base_keep_daily,
        weekly=settings.base_keep_weekly,
    )


@flow(name="backup", flow_run_name=names.backup)
def nightly_backup(drill: bool = True, retention: bool = True, base: bool = True) -> dict[str, Any]:
    """Dump the database to the object store, prove it restores, take a base backup for
    point-in-time recovery, then apply retention to dumps, base backups and WAL.

    Args:
        drill: Restore the new dump into a scratch database and compare row counts.
        retention: Delete dumps, base backups and WAL beyond the kept counts (only after a
            drill, and never the newest verified backup).
        base: Take a base backup for point-in-time recovery (the server archives WAL itself).
    """
    log = get_run_logger()
    made = dump_database()
    log.info("backup %s: %s bytes in %s s", made["id"], made["bytes"], made["seconds"])
    checked = restore_drill(made["id"]) if drill else None
    base_id = base_backup() if base else None
    removed = apply_retention() if retention and checked is not None else []
    pruned = base_retention() if retention and base_id is not None else None
    summary = {
        "backup": made,
        "drill": checked,
        "deleted": removed,
        "base_backup": base_id,
        "base_retention": pruned,
    }
    create_table_artifact(
        table=[
            {"measure": "backup id", "value": made["id"]},
            {"measure": "object", "value": made["object_key"]},
            {"measure": "bytes", "value": str(made["bytes"])},
            {"measure": "sha256", "value": made["sha256"]},
            {"measure": "dump seconds", "value": str(made["seconds"])},
            {"measure": "drill", "value": "passed" if checked else "skipped"},
            {"measure": "drill seconds", "value": str(checked["seconds"]) if checked else "-"},
            {"measure": "deleted by retention", "value": str(len(removed))},
            {"measure": "base backup", "value": base_id or "skipped"},
            {
                "measure": "base backups / WAL files deleted",
                "value": f"{len(pruned['deleted'])} / {pruned['wal_deleted']}" if pruned else "-",
            },
        ],
        key="backup-summary",
        description="nightly backup",
    )
    return summary
