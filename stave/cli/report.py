"""`stave report models | failures | prompts`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer

from stave.cli.common import JSON_HELP, print_json, reader, settings
from stave.infra.errors import InvalidInput
from stave.tasks import reports

SINCE_HELP = "Only since then: 7d, 12h, 2w or a date (UTC)."


class Report(StrEnum):
    models = "models"
    failures = "failures"
    prompts = "prompts"


def report(
    which: Report = typer.Argument(..., help="Which report."),
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
    user: str | None = typer.Option(None, "--user", help="The user (prompts)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Operator reports: clips per model version, failures per day and class, a user's prompts."""
    engine = reader(settings())
    start = reports.since(since)
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    if which == "models":
        rows = reports.models(engine, start)
        columns = ("name", "version", "clips", "hours", "first_day", "last_day")
    elif which == "failures":
        rows = reports.failures(engine, start)
        columns = ("day", "error_class", "status", "tasks")
    elif which == "prompts":
        if not user:
            raise InvalidInput("stave report prompts needs --user")
        rows = reports.prompts(engine, user, start)
        columns = ("revised_at", "prompt", "status", "asset_id")
    else:
        raise InvalidInput(f"unknown report {which.value!r}: models, failures or prompts")
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no rows")
        return
    widths = {c: max(len(c), *(len(str(r.get(c) or "-")[:60]) for r in rows)) for c in columns}
    typer.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        typer.echo("  ".join(str(r.get(c) or "-")[:60].ljust(widths[c]) for c in columns))
