"""Helpers shared by CLI commands: settings with logging, JSON output."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
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


class PollingBar:
    """A progress bar on stderr fed by polling (the database) while work runs in this process.

    `poll()` returns (total, done, postfix) or None when there is nothing to show yet; a failed
    poll (the database restarting, say) skips a tick rather than ending the bar.
    """

    def __init__(
        self,
        poll: Callable[[], tuple[int, int, dict[str, Any]] | None],
        *,
        desc: str,
        unit: str,
        total: int | None = None,
    ) -> None:
        self.poll, self.desc, self.unit, self.total = poll, desc, unit, total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PollingBar:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.total, unit=self.unit, desc=self.desc, leave=True) as bar:
            while True:
                stopping = self._stop.wait(0.5)
                try:
                    seen = self.poll()
                except Exception:
                    seen = None
                if seen is not None:
                    total, done, postfix = seen
                    bar.total = total
                    bar.n = min(done, total)
                    bar.set_postfix(refresh=False, **postfix)
                    bar.refresh()
                if stopping:
                    return
