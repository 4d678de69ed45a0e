"""Helpers shared by CLI commands: settings with logging, JSON output."""

from __future__ import annotations

import json
from typing import Any

import typer

from infra.logs import configure_logging
from infra.settings import Settings, get_settings


def settings() -> Settings:
    """The settings, with logging configured to the environment's log folder."""
    current = get_settings()
    configure_logging(current)
    return current


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
