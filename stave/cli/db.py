"""`stave db`: migrate, inspect and stop the database."""

from __future__ import annotations

import typer

from stave.cli.common import JSON_HELP, print_json, settings
from stave.infra import migrate
from stave.infra.db import database_url, dispose_engine, embedded_server, get_engine
from stave.infra.errors import ConfigError
from stave.tasks.db_status import database_status

app = typer.Typer(help="Database: migrations, status, the embedded server.", no_args_is_help=True)


@app.command()
def upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    url = database_url(settings())
    before = migrate.current_revision_at(url)
    migrate.upgrade(url, revision)
    dispose_engine()  # pooled connections predate new types (pgvector's) and tables
    after = migrate.current_revision_at(url)
    if as_json:
        print_json({"before": before, "after": after, "migrated": before != after})
    elif before == after:
        typer.echo(f"database already at revision {after}")
    else:
        typer.echo(f"database migrated from {before or 'empty'} to {after}")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Show the revision, server and pgvector versions, and rows per table."""
    current = settings()
    report = database_status(get_engine(current))
    report["embedded"] = current.uses_embedded_db
    if as_json:
        print_json(report)
        return
    where = f"embedded, {current.embedded_pg_dir}" if current.uses_embedded_db else "external"
    typer.echo(f"database   {report['database']} ({where})")
    typer.echo(f"server     PostgreSQL {report['server_version']}")
    typer.echo(f"pgvector   {report['pgvector_version'] or 'not installed'}")
    state = "up to date" if report["up_to_date"] else "behind: run `stave db upgrade`"
    typer.echo(f"revision   {report['revision'] or 'none'} (head {report['head']}, {state})")
    typer.echo("tables")
    width = max(len(t) for t in report["tables"])
    for table, count in report["tables"].items():
        typer.echo(f"  {table:<{width}}  {'missing' if count is None else count}")


@app.command()
def stop(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Stop the embedded PostgreSQL server (it otherwise keeps running between commands)."""
    current = settings()
    if not current.uses_embedded_db:
        raise ConfigError("STAVE_DATABASE_URL is set: stave only stops its embedded server")
    stopped = embedded_server(current).stop()
    if as_json:
        print_json({"stopped": bool(stopped)})
        return
    typer.echo("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
