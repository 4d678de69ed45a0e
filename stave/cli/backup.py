"""`stave backup run | list | verify | restore`."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import typer
from tqdm import tqdm

from stave.cli.common import JSON_HELP, engine, print_json, settings
from stave.infra.db import database_url
from stave.infra.objectstore import make_object_store
from stave.tasks import backup
from stave.tasks import pitr as recovery
from stave.tasks.backup import list_backups

app = typer.Typer(help="Backups: dump, list, verify by restoring, restore.", no_args_is_help=True)


@app.command()
def run(
    drill: bool = typer.Option(True, "--drill/--no-drill", help="Restore-test it afterwards."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Dump the database to the object store (pg_dump custom format) with a manifest."""
    current = settings()
    store = make_object_store(current)
    store.check()  # before a record or a dump is started
    db = engine(current)
    url = database_url(current)
    backup.mark_interrupted(db, store, older_than=timedelta(hours=12))
    # The dump's size is unknown until it ends: the bar shows bytes written and the rate.
    with tqdm(unit="B", unit_scale=True, desc="backup", leave=False) as bar:
        result = backup.run_backup(db, store, url=url, env_name=current.env, progress=bar.update)
    report: dict[str, object] = {
        "id": str(result.id),
        "object_key": result.object_key,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "seconds": round(result.seconds, 2),
        "tables": result.manifest["tables"],
    }
    if drill:
        report["drill"] = backup.drill(db, store, backup.get_backup(db, str(result.id)), url=url)
    if as_json:
        print_json(report)
        return
    typer.echo(
        f"backup {result.id}: {result.bytes} bytes in {result.seconds:.1f} s to {result.object_key}"
    )
    if drill:
        typer.echo(f"restore drill passed in {report['drill']['seconds']} s")  # type: ignore[index]


@app.command("list")
def list_(
    limit: int = typer.Option(50, "--limit", min=1, max=10000),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Backups, newest first, with status and when each was last verified."""
    settings()
    rows = list_backups(engine(settings()), limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no backups yet: stave backup run")
        return
    for r in rows:
        verified = (
            f"verified {r['verified_at']:%Y-%m-%d %H:%M}" if r["verified_at"] else "unverified"
        )
        size = f"{r['bytes']} bytes" if r["bytes"] is not None else ""
        typer.echo(
            f"{r['id']}  {r['created_at']:%Y-%m-%d %H:%M:%S}  {r['kind']:<4}  {r['status']:<9}  "
            f"{verified:<27} "
            f"{size}  {r['error'] or ''}".rstrip()
        )


@app.command()
def verify(
    backup_id: str | None = typer.Argument(None, help="Backup id (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Restore drill: check the sha256, restore into a scratch database, compare row counts."""
    current = settings()
    db = engine(current)
    record = backup.get_backup(db, backup_id)
    report = backup.drill(db, make_object_store(current), record, url=database_url(current))
    if as_json:
        print_json(report)
        return
    typer.echo(
        f"backup {report['backup_id']} restores: {report['tables']} tables, {report['rows']} rows "
        f"match the manifest ({report['seconds']} s)"
    )


@app.command()
def restore(
    backup_id: str = typer.Argument(..., help="Backup id."),
    into: str = typer.Option(..., "--into", help="Database to restore into (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Replace the contents of a non-empty one."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Restore a backup into a database on this server (a non-empty one only with --force)."""
    current = settings()
    record = backup.get_backup(engine(current), backup_id)
    counts = backup.restore(
        make_object_store(current), record, url=database_url(current), database=into, force=force
    )
    if as_json:
        print_json({"backup_id": str(record["id"]), "database": into, "rows": counts})
        return
    typer.echo(f"restored backup {record['id']} into {into}: {sum(counts.values())} rows")


@app.command()
def base(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Take a base backup (pg_basebackup, tar) into the object store, for point-in-time recovery."""
    current = settings()
    store = make_object_store(current)
    store.check()  # before a record or a base backup is started
    backup_id = recovery.take_base_backup(
        engine(current),
        store,
        url=database_url(current),
        env_name=current.env,
    )
    if as_json:
        print_json({"backup_id": str(backup_id)})
        return
    typer.echo(f"base backup {backup_id} stored")


@app.command("ship-wal")
def ship_wal(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Close the current WAL segment and move every archived segment to the object store."""
    current = settings()
    store = make_object_store(current)
    store.check()
    recovery.switch_wal(database_url(current))
    time.sleep(1)  # archive_command runs asynchronously
    count = recovery.ship_wal(store, recovery.wal_spool(current), env_name=current.env)
    if as_json:
        print_json({"shipped": count})
        return
    typer.echo(f"shipped {count} WAL file(s)")


@app.command()
def pitr(
    to: datetime = typer.Option(
        ..., "--to", help="Target time with zone, e.g. 2026-11-24T01:30:00+00:00."
    ),
    into: Path = typer.Option(
        ..., "--into", help="New, empty directory for the recovered cluster."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Restore the newest base backup before TIME, replay WAL to TIME, start it on a free port."""
    current = settings()
    recovered = recovery.recover(
        engine(current), make_object_store(current), env_name=current.env, target=to, into=into
    )
    if as_json:
        print_json(
            {
                "target": to.isoformat(),
                "base_backup_id": str(recovered.base_backup_id),
                "wal_files": recovered.wal_files,
                "url": recovered.url(current.database_name),
                "stop": recovery.stop_command(recovered),
            }
        )
        return
    typer.echo(
        f"recovered to {to.isoformat()} from base backup {recovered.base_backup_id} and "
        f"{recovered.wal_files} WAL file(s)"
    )
    typer.echo(f"running at {recovered.url(current.database_name)}")
    typer.echo(f"stop it with: {recovery.stop_command(recovered)}")
