"""`stave doctor`: one line per dependency; exit 1 if any check fails."""

from __future__ import annotations

import typer

from stave.cli.common import JSON_HELP, print_json
from stave.infra.errors import ConfigError, StaveError
from stave.infra.logs import configure_logging
from stave.infra.settings import get_settings
from stave.tasks.doctor import Check, run_checks

MARK = {"ok": "ok  ", "fail": "FAIL", "skip": "skip", "warn": "WARN"}


def doctor(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Check settings, directories, database, pgvector, schema, object store and Prefect API."""
    try:
        current = get_settings()
    except ConfigError as err:
        checks = [
            Check("settings", "fail", str(err), "fix the variable in the environment or .env")
        ]
    else:
        configure_logging(current)
        checks = [Check("settings", "ok", f"STAVE_ENV={current.env}, home {current.home}")]
        checks.extend(run_checks(current))
    if as_json:
        print_json([c.as_dict() for c in checks])
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            fix = f" (fix: {c.fix})" if c.outcome in ("fail", "warn") and c.fix else ""
            typer.echo(f"{MARK[c.outcome]}  {c.name:<{width}}  {c.detail}{fix}")
    failed = [c.name for c in checks if c.outcome == "fail"]
    if failed:
        where = "the JSON above" if as_json else "each FAIL line above"
        raise StaveError(
            f"{len(failed)} check(s) failed: {', '.join(failed)}; the fix is on {where}"
        )
