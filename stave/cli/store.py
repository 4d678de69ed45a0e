"""`stave store setup`: the object store's bucket rules (lifecycle, versioning, object lock)."""

from __future__ import annotations

import typer

from stave.cli.common import JSON_HELP, print_json, settings
from stave.infra.objectstore import make_object_store
from stave.infra.objectstore.bucket_setup import setup_bucket

app = typer.Typer(help="The object store's bucket: lifecycle rules and protection.")


@app.command()
def setup(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Apply the bucket's lifecycle rules (abort incomplete uploads after a day, expire uploaded
    prompts), versioning (deleted backups recoverable for a while) and report object lock;
    idempotent, and says what the server refused."""
    current = settings()
    store = make_object_store(current)
    report = setup_bucket(
        store,
        prompts_expire_days=current.prompts_expire_days,
        backups_keep_days=current.backup_versions_keep_days,
    )
    if as_json:
        print_json({"store": store.describe(), "items": report})
        return
    typer.echo(store.describe())
    for item in report:
        typer.echo(f"{item['status']:<15} {item['item']:<12} {item['detail']}")
