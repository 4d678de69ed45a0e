"""Test fixtures: one real PostgreSQL (pgserver) per session migrated to head, one S3 server.

Nothing is mocked: the database is the embedded cluster Stave itself starts, and the S3 server
is moto's HTTP server on loopback, spoken to through the real `minio` SDK.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from stave.infra import migrate
from stave.infra.db import ensure_database, make_engine
from stave.infra.embedded_pg import EmbeddedPostgres, RunningServer
from stave.infra.settings import Settings, get_settings
from tests.utils.net import free_port

TEST_DATABASE = "stave_test"
ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PG = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session", autouse=True)
def stave_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point STAVE_HOME at a temporary folder and clear STAVE_* variables from the caller."""
    home = tmp_path_factory.mktemp("stave-home")
    saved = {k: v for k, v in os.environ.items() if k.startswith("STAVE_")}
    for key in saved:
        del os.environ[key]
    os.environ["STAVE_HOME"] = str(home)
    get_settings.cache_clear()
    yield home
    for key in [k for k in os.environ if k.startswith("STAVE_")]:
        del os.environ[key]
    os.environ.update(saved)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """The session's embedded cluster itself (tests that restart it use this)."""
    base = tmp_path_factory.mktemp("pg")
    server = EmbeddedPostgres(base / "data", log_file=base / "postgres.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server(pg_cluster: EmbeddedPostgres) -> RunningServer:
    return pg_cluster.ensure_running()


@pytest.fixture(scope="session")
def database_url(pg_server: RunningServer) -> Iterator[str]:
    """The session database, migrated to head, and set as STAVE_DATABASE_URL."""
    ensure_database(pg_server.url("postgres"), TEST_DATABASE)
    url = pg_server.url(TEST_DATABASE)
    migrate.upgrade(url)
    os.environ["STAVE_DATABASE_URL"] = url
    get_settings.cache_clear()
    yield url
    os.environ.pop("STAVE_DATABASE_URL", None)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def engine(database_url: str, settings: Settings) -> Iterator[Engine]:
    eng = make_engine(database_url, settings)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP server on loopback (moto's server mode), as host:port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """Prefect's test harness (a throwaway server, ~13 s to start: once per session)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def stave_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Set STAVE_* variables for one test and get fresh settings; undone afterwards."""

    def apply(**values: object) -> Settings:
        for key, value in values.items():
            monkeypatch.setenv(f"STAVE_{key.upper()}", str(value))
        get_settings.cache_clear()
        return get_settings()

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (Debian's) on loopback for the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stave built as the wheel a worker host installs: once for the whole run, under a lock
    (xdist's workers share it; two builds in one source tree would collide in `build/`)."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is a folder of the run's; the run's is shared and fresh.
    shared = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "stave-wheel"
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = list(shared.glob("stave-*.whl"))
        if not built:
            _build_wheel(shared)
            built = list(shared.glob("stave-*.whl"))
    (wheel_file,) = built
    return wheel_file


def _build_wheel(out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=out,
    )


@pytest.fixture(scope="session")
def wheel_site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed alone into a folder (`PYTHONPATH` for a worker "host" that has only
    the installed package; its dependencies come from this environment)."""
    site = tmp_path_factory.mktemp("wheel-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), wheel],
        check=True,
        capture_output=True,
    )
    return site


@pytest.fixture(scope="session")
def debian_postgres_bin() -> Path:
    """Debian's PostgreSQL 15 binaries (with pg_trgm, which the Prefect server needs and
    pgserver's build lacks); the tests that need them skip where they are missing."""
    if not (DEBIAN_PG / "initdb").exists():
        pytest.skip("Debian's postgresql-15 is not installed (.ci/run installs it)")
    return DEBIAN_PG


# The end-to-end drills (a Prefect server, several workers, their flow runs: processes of their
# own) starve each other on two cores when they overlap, and xdist's file order (most tests
# first) put them side by side at the end of the run. They run as one unit on one xdist worker,
# first, while the other worker takes the rest.
DRILLS = ("tests/test_deployments.py", "tests/test_fleet.py")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadFileScheduling

    class DrillsFirst(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            scope = str(super()._split_scope(nodeid))
            return "drills" if scope in DRILLS else scope

        def _assign_work_unit(self, node: Any) -> None:
            if "drills" in self.workqueue:
                self.workqueue.move_to_end("drills", last=False)
            super()._assign_work_unit(node)

    return DrillsFirst(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests where no CUDA device is present (CI never has one)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)
