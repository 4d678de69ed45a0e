"""`stave store setup | migrate-keys | copy`: the bucket's rules (lifecycle, versioning, object
lock), moving objects written before keys were scoped by environment, and carrying a pilot's
filesystem store into this one."""

from __future__ import annotations

from pathlib import Path

import typer
from tqdm import tqdm

from stave.cli.common import JSON_HELP, engine, print_json, settings
from stave.infra import migrate
from stave.infra.db import database_url
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.infra.objectstore.bucket_setup import Retention, setup_bucket
from stave.infra.objectstore.filesystem import FilesystemStore
from stave.tasks import pilot
from stave.tasks.keymigration import migrate_keys

app = typer.Typer(help="The object store's bucket: lifecycle rules and protection.")


@app.command()
def setup(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Apply the bucket's lifecycle rules (abort incomplete uploads after a day, expire uploaded
    prompts, listening pages and Data Docs pages), versioning (deleted backups recoverable for
    a while) and report object lock; idempotent, and says what the server refused."""
    current = settings()
    store = make_object_store(current)
    report = setup_bucket(
        store,
        env=current.env,
        keep=Retention(
            prompts_expire_days=current.prompts_expire_days,
            backups_keep_days=current.backup_versions_keep_days,
            gallery_keep_days=current.gallery_keep_days,
            data_docs_keep_days=current.data_docs_keep_days,
        ),
    )
    if as_json:
        print_json({"store": store.describe(), "items": report})
        return
    typer.echo(store.describe())
    for item in report:
        typer.echo(f"{item['status']:<15} {item['item']:<12} {item['detail']}")


@app.command("migrate-keys")
def migrate_keys_(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Move this environment's objects written before keys were scoped by environment
    (`audio/…` to `<env>/audio/…`, `backups/<env>/…` to `<env>/backups/…`, …): each copy is
    checked by sha256 before its rows point at it and the old object goes. Resumable: run it
    again after an interruption; running it when nothing is left to move changes nothing."""
    current = settings()
    store = make_object_store(current)
    store.check()
    with tqdm(unit="obj", desc="migrating keys", leave=False) as bar:
        done = migrate_keys(engine(current), store, current.env, progress=bar.update)
    if as_json:
        print_json(done.to_dict())
        return
    typer.echo(
        f"moved {done.objects} object(s) under {current.env}/ ({done.already} already there), "
        f"{done.rows} row(s) repointed; {done.left} legacy object(s) left that are not this "
        "environment's to move (prompts, or audio no record of it points to)"
    )


@app.command("copy")
def copy_(
    from_home: Path = typer.Option(
        ..., "--from-home", help="The pilot's STAVE_HOME (its `.stave` folder)."
    ),
    from_env: str = typer.Option("dev", "--from-env", help="The pilot's STAVE_ENV."),
    from_bucket: str = typer.Option("stave", "--from-bucket", help="The pilot's STAVE_BUCKET."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Carry a pilot's filesystem store into this environment's store: every object under the
    pilot's `<env>/` to the same key under this `<env>/`, each checked by sha256 (its base
    backups and WAL stay behind: they are its own server's); then repoint the records restored
    from its dump (`stave backup restore`) at the copies. Resumable: run it again after an
    interruption, and again after the restore."""
    current = settings()
    pilot.check_environment(from_env, "--from-env")
    source_root = from_home.expanduser().resolve() / from_env / "data" / "objects"
    if not (source_root / from_bucket / from_env).is_dir():
        raise InvalidInput(
            f"no filesystem store of environment {from_env} at {source_root / from_bucket}: "
            "give the pilot's STAVE_HOME as --from-home (and --from-env, --from-bucket)"
        )
    source = FilesystemStore(source_root, from_bucket)
    target = make_object_store(current)
    target.check()
    with tqdm(unit="B", unit_scale=True, desc="copying objects", leave=False) as bar:
        done = pilot.copy_objects(
            source, target, from_env=from_env, to_env=current.env, progress=bar.update
        )
    # Before the pilot's dump is restored the database is empty (restore wants it so): the
    # records are repointed by the run after the restore.
    schema = migrate.current_revision_at(database_url(current)) is not None
    if schema:
        done.rows = pilot.repoint_rows(
            engine(current), target, from_env=from_env, to_env=current.env
        )
    if as_json:
        print_json(
            {"from": source.describe(), "to": target.describe(), "repointed": schema}
            | done.to_dict()
        )
        return
    typer.echo(
        f"copied {done.objects} object(s) ({done.bytes / 1e6:.1f} MB) from {source.describe()} "
        f"to {target.describe()} under {current.env}/ ({done.already} already there, "
        f"{done.left_behind} base-backup and WAL object(s) left behind"
        + (f", {done.unchecked} with no sha256 recorded to check" if done.unchecked else "")
        + "); "
        + (
            f"{done.rows} record(s) repointed"
            if schema
            else "the database has no schema yet: restore the pilot's dump (`stave backup "
            "restore ID --into DB`), then run this again to repoint its records"
        )
    )
