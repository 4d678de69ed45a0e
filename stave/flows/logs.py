"""The logger a flow's code should use: the run's, or a plain one outside a run."""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger


def run_logger(name: str) -> Any:
    """Prefect's run logger inside a flow or task run (its lines reach the UI); otherwise, as
    when tests or the CLI call the same code directly, the standard logger `name`."""
    try:
        return get_run_logger()
    except Exception:
        return logging.getLogger(name)
