"""`stave store setup | migrate-keys`: the bucket's rules (lifecycle, versioning, object lock),
and moving objects written before keys were scoped by environment."""

from __future__ import annotations

import typer
from tqdm import tqdm

from stave.cli.common import JSON_HELP, engine, print_json, settings
from stave.infra.objectstore import make_object_store
from stave.infra.objectstore.bucket_setup import Retention, setup_bucket
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
