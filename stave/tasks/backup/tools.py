"""PostgreSQL's client tools as Stave runs them: pg_dump and pg_restore from the bundled
binaries, their output streamed into the store, their stderr drained, one line on failure."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import text

from stave.infra.embedded_pg import bin_dir
from stave.infra.errors import StaveError
from stave.infra.objectstore.base import ObjectInfo, ObjectStore


class BackupFailed(StaveError):
    """pg_dump, pg_restore or a drill's check failed; the message says which and why."""

    error_class = "internal"


@dataclass
class BackupResult:
    id: uuid.UUID
    object_key: str
    bytes: int
    sha256: str
    manifest: dict[str, Any]
    seconds: float


def tool(name: str) -> str:
    return str(bin_dir() / name)


def user_tables(conn: Any) -> list[str]:
    rows = conn.execute(
        text(
            # Not pg_stat_user_tables: it lists other sessions' temporary tables too (a
            # backfill's staging table, say), which pg_dump rightly leaves out.
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        )
    ).scalars()
    return list(rows)


def count_rows(conn: Any, tables: Iterable[str]) -> dict[str, int]:
    return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in tables}


def stream_to_store(
    argv: list[str],
    env: dict[str, str],
    store: ObjectStore,
    key: str,
    *,
    content_type: str,
    progress: Callable[[int], None] | None = None,
) -> tuple[ObjectInfo, str]:
    """Run a tool whose stdout is the backup, streaming it into the store; returns what was
    written and the tool's stderr. A failing tool or store raises, and the child is killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    errors = Drain(proc.stderr)
    try:
        source: Any = proc.stdout if progress is None else _Counted(proc.stdout, progress)
        info = store.put_stream(key, source, content_type=content_type)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    errors.join()
    name = argv[0].rsplit("/", 1)[-1]
    if code != 0:
        raise BackupFailed(f"{name} exited with {code}: {errors.first_line()}")
    return info, errors.data.decode(errors="replace")


class _Counted:
    """A read-through wrapper that reports how many bytes went by (for a progress bar)."""

    def __init__(self, stream: Any, report: Callable[[int], None]) -> None:
        self.stream, self.report = stream, report

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.stream.read(size)
        if data:
            self.report(len(data))
        return data


class Drain(threading.Thread):
    """Read a child's stderr in the background so it can never block on a full pipe."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        super().__init__(daemon=True)
        self.stream, self.data = stream, b""
        self.start()

    def run(self) -> None:
        if self.stream is not None:
            self.data = self.stream.read()

    def first_line(self) -> str:
        lines = [line for line in self.data.decode(errors="replace").splitlines() if line.strip()]
        return lines[0] if lines else "(no message)"


def tool_version(name: str) -> str:
    out = subprocess.run([tool(name), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def check_major(server_version: str) -> None:
    tools = tool_version("pg_dump").split()[-1]
    if int(server_version.split(".")[0]) > int(tools.split(".")[0]):
        raise BackupFailed(
            f"server is PostgreSQL {server_version} but pg_dump is {tools}: a dump needs client "
            "tools of the server's major version or newer"
        )
