"""Nightly backup: dump to the object store, restore drill, retention.

Order matters: a new dump is proven restorable (the drill) before retention may delete older
ones, and retention never deletes the newest verified backup. A failed dump or drill fails the
flow run with the cause as its message.
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
def restore_drill(backup_id: str | None) -> dict[str, Any]:
    settings = get_settings()
    record = backup.get_backup(get_engine(), backup_id)
    return backup.drill(
        get_engine(), make_object_store(settings), record, url=database_url(settings)
    )


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


@task(name="ship-wal", cache_policy=NO_CACHE)
def ship_wal() -> int:
    settings = get_settings()
    pitr.switch_wal(database_url(settings))
    return pitr.ship_wal(
        make_object_store(settings), pitr.wal_spool(settings), env_name=settings.env
    )


@task(name="base-backup", cache_policy=NO_CACHE)
def base_backup() -> str:
    settings = get_settings()
    return pitr.take_base_backup(
        get_engine(), make_object_store(settings), url=database_url(settings), env_name=settings.env
    )


@flow(name="backup", flow_run_name=names.backup)
def nightly_backup(
    drill: bool = True, retention: bool = True, base: bool = True, wal: bool = True
) -> dict[str, Any]:
    """Dump the database to the object store, prove it restores, then apply retention; take a
    base backup and ship archived WAL for point-in-time recovery.

    Args:
        drill: Restore the new dump into a scratch database and compare row counts.
        retention: Delete dumps beyond the daily/weekly/monthly counts (only after a drill).
        base: Take a base backup for point-in-time recovery.
        wal: Ship archived WAL segments to the object store.
    """
    log = get_run_logger()
    made = dump_database()
    log.info("backup %s: %s bytes in %s s", made["id"], made["bytes"], made["seconds"])
    checked = restore_drill(made["id"]) if drill else None
    removed = apply_retention() if retention and checked is not None else []
    settings = get_settings()
    archiving = settings.uses_embedded_db or settings.wal_spool_dir is not None
    if (base or wal) and not archiving:
        log.warning(
            "point-in-time recovery is not configured (STAVE_WAL_SPOOL_DIR unset for an "
            "external database): skipping the base backup and WAL shipping"
        )
    base_id = base_backup() if base and archiving else None
    shipped = ship_wal() if wal and archiving else 0
    summary = {
        "backup": made,
        "drill": checked,
        "deleted": removed,
        "base_backup": base_id,
        "wal_shipped": shipped,
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
            {"measure": "WAL files shipped", "value": str(shipped)},
        ],
        key="backup-summary",
        description="nightly backup",
    )
    return summary
