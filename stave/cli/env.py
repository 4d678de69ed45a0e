"""`stave env`: the effective settings, secrets masked."""

from __future__ import annotations

import typer

from stave.cli.common import print_json, settings


def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the effective settings (environment, .env and profile), with secrets masked."""
    view = settings().public_view()
    if as_json:
        print_json(view)
        return
    width = max(len(k) for k in view)
    for key, value in view.items():
        shown = "" if value is None else value
        typer.echo(f"STAVE_{key.upper():<{width}}  {shown}")
