"""`stave templates` and `stave prefs`: the hot configuration submissions read (cached)."""

from __future__ import annotations

import json
from typing import Any

import typer

from stave.cli.common import JSON_HELP, engine, print_json, settings
from stave.infra.cache import get_cache
from stave.infra.errors import InvalidInput
from stave.tasks import catalog

templates_app = typer.Typer(help="Style templates: named parameter presets for prompt rows.")
prefs_app = typer.Typer(help="Users' default generation parameters.")

PARAM_HELP = "name=value (duration_s, steps, guidance, scheduler); repeat for several."


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`steps=12` → {"steps": 12}: values read as JSON where they parse, else as text."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"--param {pair!r}: expected name=value")
        try:
            values[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[name.strip()] = raw
    return values


@templates_app.command("set")
def set_template(
    name: str = typer.Argument(..., help="Template name, as rows give it in style_template."),
    param: list[str] = typer.Option([], "--param", "-p", help=PARAM_HELP),
    description: str | None = typer.Option(None, "--description", help="What it is for."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create or replace a style template; submissions see the new values at once."""
    current = settings()
    saved = catalog.put_template(
        engine(current), get_cache(current), current, name, parse_params(param), description
    )
    if as_json:
        print_json(saved)
    else:
        typer.echo(f"template {name}: {saved['parameters']}")


@templates_app.command("list")
def list_templates(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every style template with its parameters."""
    rows = catalog.list_templates(engine(settings()))
    if as_json:
        print_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['name']:<24} {json.dumps(row['parameters'])}  {row['description']}")


@prefs_app.command("set")
def set_prefs(
    user: str = typer.Argument(..., help="The user id."),
    param: list[str] = typer.Option([], "--param", "-p", help=PARAM_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Set a user's default parameters (replacing the previous ones)."""
    current = settings()
    saved = catalog.put_preferences(
        engine(current), get_cache(current), current, user, parse_params(param)
    )
    if as_json:
        print_json(saved)
    else:
        typer.echo(f"preferences of {user}: {saved['parameters']}")


@prefs_app.command("show")
def show_prefs(
    user: str = typer.Argument(..., help="The user id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """A user's default parameters (through the cache, as submissions read them)."""
    current = settings()
    with engine(current).connect() as conn:
        found = catalog.preferences(conn, get_cache(current), current, [user]).get(user, {})
    if as_json:
        print_json({"user_id": user, "parameters": found})
    else:
        typer.echo(f"preferences of {user}: {found}")
