"""The embedded PostgreSQL 16 + pgvector cluster from the `pgserver` package, reached over TCP.

pgserver's own `get_server` starts postgres with TCP disabled, and stops it when the last Python
process using it exits. Stave needs a server that outlives one command and that psycopg, pg_dump
and replicas reach on 127.0.0.1, so it drives pgserver's binaries with `pg_ctl` itself, reusing
pgserver's helpers for running as root (postgres then runs as the OS user `pgserver`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pwd
import shlex
import socket
import subprocess
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from stave.infra import wal
from stave.infra.errors import DatabaseUnavailable
from stave.infra.filelock import file_lock
from stave.infra.settings import Settings

log = logging.getLogger(__name__)

SYSTEM_USER_WHEN_ROOT = "pgserver"
SUPERUSER = "postgres"
ARCHIVE_CONF = "stave_archive.conf"
START_TIMEOUT_S = 60


def bin_dir() -> Path:
    """pgserver's PostgreSQL 16 client and server binaries (pg_ctl, pg_dump, pg_restore, ...)."""
    # Located without importing pgserver: its import touches XDG_RUNTIME_DIR and warns.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseUnavailable("the pgserver package is not installed: pip install pgserver")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class RunningServer:
    pid: int
    port: int
    host: str = "127.0.0.1"

    def url(self, database: str) -> str:
        # trust auth on loopback only: the embedded cluster is a development default.
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"


class EmbeddedPostgres:
    """One cluster in `pgdata`, started on demand and kept running between commands."""

    def __init__(
        self, pgdata: Path, *, log_file: Path, port: int = 0, archive_to: Settings | None = None
    ) -> None:
        self.pgdata = pgdata.resolve()
        self.log_file = log_file.resolve()
        self.requested_port = port
        self._state_file = self.pgdata.parent / f"{self.pgdata.name}.json"
        # With `archive_to`, every finished WAL segment goes to that settings' object store
        # (continuous archiving for point-in-time recovery); without, archiving is off.
        self.archive_to = archive_to
        self.archive_target = self.pgdata.parent / f"{self.pgdata.name}_archive.json"
        self._lock_file = self.pgdata.parent / f"{self.pgdata.name}.lock"
        self._run_as = SYSTEM_USER_WHEN_ROOT if os.geteuid() == 0 else None

    # -- public -----------------------------------------------------------------------------
    def ensure_running(self) -> RunningServer:
        """Start the cluster (initialising it the first time) unless it already runs on TCP."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            running = self.status()
            if running is not None:
                return running
            self._stop_if_unix_only()
            self._prepare_permissions()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._configure_archiving()
            return self._start()

    def status(self) -> RunningServer | None:
        """The running server listening on loopback TCP, or None."""
        info = self._postmaster_info()
        if info is None:
            return None
        pid, port, host, state = info
        # "standby": a hot standby (a replica) accepting read-only connections.
        accepting = state in ("ready", "standby")
        if not _pid_alive(pid) or not accepting or port is None or host != "127.0.0.1":
            return None
        return RunningServer(pid=pid, port=port)

    def stop(self) -> bool:
        """Stop the cluster if it runs; True if it was running."""
        with self._locked():
            info = self._postmaster_info()
            if info is None or not _pid_alive(info[0]):
                return False
            self._pg_ctl(["-w", "-m", "fast", "stop"], timeout=START_TIMEOUT_S)
            return True

    def wake_checkpointer(self) -> None:
        """Make `archive_timeout` count from now. The checkpointer starts while the server is
        still starting up, takes itself for in recovery and sleeps a whole checkpoint_timeout
        (5 min) before it first forces a segment switch; a reload wakes it (measured: no
        forced switch in 30 s after a start, one every archive_timeout after a reload)."""
        if self.archive_to is not None:
            self._pg_ctl(["reload"], timeout=30)

    # -- steps ------------------------------------------------------------------------------
    def _initdb(self) -> None:
        log.info("initialising embedded PostgreSQL cluster in %s", self.pgdata)
        self._run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                SUPERUSER,
            ],
            timeout=120,
        )

    def _configure_archiving(self) -> None:
        """Archiving on (to the store, wal.py) or off, written to its own included file on every
        start: a restored copy of this cluster never archives into the original's place unless
        it is started as the new primary."""
        conf = self.pgdata / ARCHIVE_CONF
        if self.archive_to is None:
            body = "wal_level = replica\narchive_mode = off\n"
        else:
            setup = wal.write_target(self.archive_to, self.archive_target, owner=self._run_as)
            body = setup.conf_lines()
        conf.write_text("# Written by Stave on every start of the embedded server.\n" + body)
        main = self.pgdata / "postgresql.conf"
        include = f"include_if_exists = '{ARCHIVE_CONF}'"
        if include not in main.read_text():
            with main.open("a") as handle:
                handle.write(f"\n{include}\n")
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def _start(self) -> RunningServer:
        port = self._choose_port()
        # No unix socket (`-k ''`): everything connects over loopback TCP, and a socket path
        # under a deep STAVE_HOME could exceed the 107-byte limit.
        options = f"-h 127.0.0.1 -p {port} -k ''"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.log_file, entry.pw_uid, entry.pw_gid)
        try:
            self._pg_ctl(
                [
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "start",
                ],
                timeout=START_TIMEOUT_S + 10,
            )
        except DatabaseUnavailable as err:
            cause = last_fatal(self.log_file)
            because = f": {cause}" if cause else ""
            raise DatabaseUnavailable(f"{err}{because} (see {self.log_file})") from err
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            running = self.status()
            if running is not None:
                self._state_file.write_text(json.dumps({"port": running.port}))
                self.wake_checkpointer()
                log.info("embedded PostgreSQL running on 127.0.0.1:%s", running.port)
                return running
            time.sleep(0.1)
        raise DatabaseUnavailable(
            f"embedded PostgreSQL did not become ready in {START_TIMEOUT_S}s (see {self.log_file})"
        )

    def _stop_if_unix_only(self) -> None:
        # A cluster started by pgserver.get_server() listens on a unix socket only: restart it.
        info = self._postmaster_info()
        if info is not None and _pid_alive(info[0]):
            log.info("restarting embedded PostgreSQL to listen on loopback TCP")
            self._pg_ctl(["-w", "-m", "fast", "stop"], timeout=START_TIMEOUT_S)

    def _choose_port(self) -> int:
        if self.requested_port:
            return self.requested_port
        # Keep the port from the last start so URLs printed earlier stay valid.
        if self._state_file.exists():
            try:
                previous = int(json.loads(self._state_file.read_text())["port"])
            except (ValueError, KeyError, json.JSONDecodeError):
                previous = 0
            if previous and _port_free(previous):
                return previous
        return _free_port()

    def _prepare_permissions(self) -> None:
        if self._run_as is None:
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning on import
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        # As root, postgres runs as its own OS user, which must traverse every parent folder
        # and own the data directory.
        entry = ensure_user_exists(self._run_as)
        assert entry is not None
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(bin_dir())
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    # -- helpers ----------------------------------------------------------------------------
    def _pg_ctl(self, args: list[str], *, timeout: float) -> None:
        self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args], timeout=timeout)

    def _run(self, argv: list[str], *, timeout: float) -> None:
        try:
            # Files, not pipes: pg_ctl's postmaster keeps inherited pipes open and would hang us.
            subprocess.run(
                argv,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                user=self._run_as,
                cwd="/",
            )
        except subprocess.CalledProcessError as err:
            raise DatabaseUnavailable(
                f"{Path(argv[0]).name} failed with exit code {err.returncode}: {shlex.join(argv)}"
            ) from err
        except subprocess.TimeoutExpired as err:
            raise DatabaseUnavailable(f"{Path(argv[0]).name} timed out after {timeout}s") from err

    def _postmaster_info(self) -> tuple[int, int | None, str, str] | None:
        """(pid, port, listen address, status) from postmaster.pid, or None."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 8:
            return None  # the postmaster is still writing it
        try:
            pid = int(lines[0])
            port = int(lines[3]) if lines[3].strip() else None
        except ValueError:
            return None
        return pid, port, lines[5].strip(), lines[7].strip()

    def _locked(self) -> AbstractContextManager[None]:
        # Two commands starting at once must not both run initdb or pg_ctl start.
        return file_lock(self._lock_file)


def last_fatal(log_file: Path, tail_bytes: int = 64 * 1024) -> str | None:
    """The server's last FATAL or PANIC message in its log (why it did not start), if any."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        for level in ("FATAL:", "PANIC:"):
            if level in line:
                return line.split(level, 1)[1].strip()
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user (the pgserver OS user)
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As postgres binds: SO_REUSEADDR, so connections in TIME_WAIT don't count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
