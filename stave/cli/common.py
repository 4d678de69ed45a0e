"""What CLI commands share: settings with logging, the database made ready, JSON output, the
choices shown in `--help`, rejected rows, and a progress bar polled from the database."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import typer
from sqlalchemy.engine import Engine
from tqdm import tqdm

from stave.infra import migrate
from stave.infra.db import database_url, dispose_engine, get_engine
from stave.infra.logs import configure_logging
from stave.infra.prefect_env import apply_client_env
from stave.infra.replica import read_engine
from stave.infra.settings import Settings, get_settings
from stave.tasks.outcome import ClipsFailed

JSON_HELP = "Print JSON."


class FileFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def settings() -> Settings:
    """The settings, with logging configured to the environment's log folder."""
    current = get_settings()
    configure_logging(current)
    return current


_schema_checked: set[str] = set()


def engine(current: Settings) -> Engine:
    """The database, ready for a command: the embedded one started and migrated on first use
    (a newcomer's first command may be any command); an external one behind head refused in
    one line (`stave db upgrade` is a deliberate step there). Checked once per process."""
    url = database_url(current)
    if url not in _schema_checked:
        migrate.ensure_at_head(url, embedded=current.uses_embedded_db)
        dispose_engine()  # pooled connections may predate the migration's types and tables
        _schema_checked.add(url)
    return get_engine(current)


def reader(current: Settings) -> Engine:
    """The engine reports and searches read from: the replica when one is configured and fit,
    else the primary (made ready as by `engine`)."""
    engine(current)
    return read_engine(current)


def in_process_prefect(current: Settings) -> None:
    """Before a flow runs in this process (and before anything is written for it): Prefect's
    home beside Stave's data, quiet logs, and a configured API answering (else its ephemeral
    one is used)."""
    apply_client_env(current, current.prefect_api_url)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect's temporary server (no API configured) gets 20 s to start by default: too few on
    # a busy machine, where the first `stave generate` then failed.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from stave.flows import admin  # prefect, imported after its environment is set

    if current.prefect_api_url:
        admin.check_api(current.prefect_api_url)
    else:
        admin.ensure_local_database(current.prefect_home)


def flow_summary(state: Any) -> dict[str, Any]:
    """The summary a flow run in this process returned, whether it ended Completed or Failed
    because its clips failed (the summary is the Failed state's data); a run that raised
    raises here."""
    data = state.result(raise_on_failure=False)
    if isinstance(data, ClipsFailed):
        return data.summary
    if isinstance(data, BaseException):
        raise data
    return dict(data)


def raise_if_clips_failed(summary: dict[str, Any], details: str) -> None:
    """After the summary is printed: a run whose clips failed exits 3 with one line."""
    if summary.get("failure"):
        raise ClipsFailed(f"{summary['failure']}; details: {details}")


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_rejections(
    rejections: list[dict[str, Any]], as_json: bool, count: int | None = None
) -> None:
    """Rejected rows on stderr (row, line, field, reason), the first fifty of them; `count`:
    how many there were, when more than the rejections listed."""
    count = max(count or 0, len(rejections))
    if as_json or not count:
        return
    typer.echo(f"rejected {count} row(s):", err=True)
    for r in rejections[:50]:
        line = f" (line {r['line']})" if r.get("line") else ""
        typer.echo(f"  row {r['row']}{line}, {r['field']}: {r['reason']}", err=True)
    if count > 50:
        typer.echo(f"  … and {count - 50} more (stave job ID --json)", err=True)


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
