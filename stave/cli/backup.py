"""`stave backup run | list | verify | restore | base | wal-setup | pitr`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

import typer
from tqdm import tqdm

from stave.cli.common import JSON_HELP, engine, print_json, settings
from stave.infra.db import database_url
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import ObjectStore, make_object_store
from stave.infra.wal import write_target
from stave.models.base import parse_id
from stave.tasks import backup
from stave.tasks import pitr as recovery
from stave.tasks.backup import list_backups

app = typer.Typer(
    help="Backups: dumps and base backups in the object store, continuous WAL archiving, "
    "restore and point-in-time recovery (these work with the database gone).",
    no_args_is_help=True,
)


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
        found = backup.find_backup(store, current.env, str(result.id), kind="dump")
        report["drill"] = backup.drill(db, store, found.as_record(), url=url)
    backup.sync_records(db, store, current.env)  # the cache learns what the store holds
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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    runs: bool = typer.Option(
        False, "--runs", help="The database's record of backup runs instead (failed ones too)."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=10000, help="With --runs: how many."),
) -> None:
    """Backups in the object store (dumps, base backups) and each cluster's archived WAL.

    Read from the store alone: works with the database server stopped or gone."""
    current = settings()
    if runs:
        rows = list_backups(engine(current), limit)
        if as_json:
            print_json(rows)
            return
        for r in rows:
            typer.echo(
                f"{r['id']}  {r['created_at']:%Y-%m-%d %H:%M:%S}  {r['kind']:<4}  "
                f"{r['status']:<9}  {r['error'] or ''}".rstrip()
            )
        return
    store = make_object_store(current)
    stored = backup.stored_backups(store, current.env)
    wal = backup.wal_summary(store, current.env)
    if as_json:
        print_json(
            {
                "env": current.env,
                "store": store.describe(),
                "backups": [_entry(b) for b in stored],
                "wal": [asdict(w) for w in wal],
            }
        )
        return
    if not stored and not wal:
        typer.echo(f"no backups of {current.env!r} in {store.describe()} yet: stave backup run")
        return
    for b in stored:
        verified = f"verified {b.verified_at:%Y-%m-%d %H:%M}" if b.verified_at else "unverified"
        typer.echo(
            f"{b.id}  {b.started_at:%Y-%m-%d %H:%M:%S}  {b.kind:<4}  {verified:<26}  "
            f"{b.bytes} bytes"
        )
    for w in wal:
        newest = f"{w.newest_at:%Y-%m-%d %H:%M:%S}" if w.newest_at else "-"
        typer.echo(
            f"WAL of cluster {w.system}: {w.files} file(s), {w.bytes} bytes, segments "
            f"{w.first} .. {w.last}, newest archived {newest}"
        )


def _entry(b: backup.StoredBackup) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": str(b.id),
        "kind": b.kind,
        "object_key": b.object_key,
        "bytes": b.bytes,
        "sha256": b.sha256,
        "started_at": b.started_at.isoformat(),
        "finished_at": b.finished_at.isoformat(),
        "verified_at": b.verified_at.isoformat() if b.verified_at else None,
    }
    if b.kind == "base":
        entry["start_wal"] = b.manifest.get("start_wal")
        entry["system_identifier"] = b.manifest.get("system_identifier")
    return entry


@app.command()
def verify(
    backup_id: str | None = typer.Argument(None, help="Backup id (default: the newest dump)."),
    store_only: bool = typer.Option(
        False, "--store-only", help="Check the objects' sha256 only; restore nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check a backup. A dump: sha256, then a restore drill into a scratch database on the
    configured server. A base backup: its sha256 and every WAL file it needs, from the store
    alone (no server)."""
    current = settings()
    store = make_object_store(current)
    kind = _kind_of(store, current.env, backup_id)
    if kind == "base":
        report = recovery.verify_base(store, current.env, backup_id)
        if as_json:
            print_json(report)
            return
        typer.echo(
            f"base backup {report['backup_id']} and its {report['wal_files']} WAL file(s) are "
            f"intact, through segment {report['last_segment']}"
        )
        return
    found = backup.find_backup(store, current.env, backup_id, kind="dump")
    if store_only:
        store.verify(found.object_key, expected_sha256=found.sha256)
        report = {"backup_id": str(found.id), "kind": "dump", "bytes": found.bytes}
        if as_json:
            print_json(report)
            return
        typer.echo(f"backup {found.id}: {found.bytes} bytes, sha256 matches the manifest")
        return
    report = backup.drill(None, store, found.as_record(), url=database_url(current))
    if as_json:
        print_json(report)
        return
    typer.echo(
        f"backup {report['backup_id']} restores: {report['tables']} tables, {report['rows']} rows "
        f"match the manifest ({report['seconds']} s)"
    )


def _kind_of(store: ObjectStore, env_name: str, backup_id: str | None) -> str:
    if backup_id is None:
        return "dump"
    ident = parse_id(backup_id, "backup")
    # Missing, or its manifest corrupted: find_backup says which, in one line.
    try:
        return backup.find_backup(store, env_name, str(ident), kind="dump").kind
    except InvalidInput:  # there, but not a dump
        return "base"


@app.command()
def restore(
    backup_id: str = typer.Argument(..., help="Backup id."),
    into: str = typer.Option(..., "--into", help="Database to restore into (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Replace the contents of a non-empty one."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Restore a dump into a database on the configured server (a non-empty one only with
    --force). The dump is found in the object store: a new, empty server is enough."""
    current = settings()
    store = make_object_store(current)
    record = backup.find_backup(store, current.env, backup_id, kind="dump").as_record()
    counts = backup.restore(store, record, url=database_url(current), database=into, force=force)
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
    db = engine(current)
    backup_id = recovery.take_base_backup(
        db, store, url=database_url(current), env_name=current.env
    )
    backup.sync_records(db, store, current.env)
    if as_json:
        print_json({"backup_id": str(backup_id)})
        return
    typer.echo(f"base backup {backup_id} stored")


@app.command("wal-setup")
def wal_setup(
    target_file: Path = typer.Option(
        ...,
        "--target-file",
        help="Where the database host keeps the store settings archive_command reads (0600).",
    ),
    owner: str | None = typer.Option(
        None, "--owner", help="The database server's OS user (as root: the file's owner)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Continuous WAL archiving for an external PostgreSQL: run on the database host; writes
    the target file and prints the postgresql.conf lines (the embedded server does this itself)."""
    current = settings()
    setup = write_target(current, target_file, owner=owner)
    if as_json:
        print_json(
            {
                "target_file": str(setup.target_file),
                "archive_command": setup.command,
                "archive_timeout": setup.timeout_s,
            }
        )
        return
    typer.echo(f"# wrote {setup.target_file}; add to postgresql.conf and reload:")
    typer.echo(setup.conf_lines().rstrip())
    typer.echo(
        "# and reload once after every start (pg_ctl reload): until then the checkpointer "
        "sleeps a whole checkpoint_timeout before archive_timeout first applies"
    )


@app.command()
def pitr(
    to: datetime | None = typer.Option(
        None, "--to", help="Target time with zone, e.g. 2026-11-24T01:30:00+00:00."
    ),
    latest: bool = typer.Option(False, "--latest", help="Replay every archived WAL segment."),
    into: Path | None = typer.Option(
        None, "--into", help="New, empty directory for the recovered cluster."
    ),
    as_embedded: bool = typer.Option(
        False,
        "--as-embedded",
        help="Recover into the embedded database's own (missing or empty) directory, as the "
        "new primary: it archives WAL again and every stave command uses it.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Recover from the object store alone: the newest base backup before the target, replay
    the archived WAL to the target (or all of it with --latest), start it on a free port."""
    current = settings()
    if (to is None) == (not latest):
        raise InvalidInput("give exactly one of --to TIME and --latest")
    if (into is None) == (not as_embedded):
        raise InvalidInput("give exactly one of --into DIR and --as-embedded")
    archive_to = None
    if as_embedded:
        if not current.uses_embedded_db:
            raise InvalidInput("--as-embedded: STAVE_DATABASE_URL points at an external server")
        into = recovery.check_embedded_slot(current).parent / "recovered"
        archive_to = current
    assert into is not None
    recovered = recovery.recover(
        make_object_store(current),
        env_name=current.env,
        target=to,
        into=into,
        archive_to=archive_to,
    )
    if as_embedded:
        recovered = recovery.adopt_as_embedded(recovered, current)
    url = recovered.url(current.database_name)
    report = {
        "target": to.isoformat() if to else "latest",
        "base_backup_id": recovered.base_backup_id,
        "wal_files": recovered.wal_files,
        "last_segment": recovered.last_segment,
        "reached_at": recovered.reached_at.isoformat() if recovered.reached_at else None,
        "short_of_target": recovered.short_of_target,
        "url": url,
        "stop": recovery.stop_command(recovered),
    }
    if as_json:
        print_json(report)
        return
    reached = f"; the last transaction replayed committed at {report['reached_at']}"
    if recovered.short_of_target:
        typer.echo(f"recovered to the end of the archive, short of {report['target']}:")
        typer.echo(f"  {recovered.short_of_target}")
    typer.echo(
        f"recovered to {'its end' if recovered.short_of_target else report['target']} from base "
        f"backup {recovered.base_backup_id} and {recovered.wal_files} WAL file(s) (through "
        f"{recovered.last_segment}){reached if report['reached_at'] else ''}"
    )
    typer.echo(f"running at {url}")
    typer.echo(f"stop it with: {report['stop']}")
