"""Read routing against a real streaming replica (`pg_basebackup -R` of the session's cluster):
reads on the replica, writes on the primary, and the primary again when the replica is down or
too far behind."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from stave.infra import replica as routing
from stave.infra.embedded_pg import EmbeddedPostgres, RunningServer
from stave.infra.settings import Settings
from tests.test_cli import stave
from tests.utils.replica import start_replica

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def standby(
    pg_server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedPostgres]:
    cluster = start_replica(pg_server, tmp_path_factory.mktemp("replica") / "data")
    yield cluster
    cluster.stop()


@pytest.fixture
def replica_url(
    standby: EmbeddedPostgres, database_url: str, stave_env: Callable[..., Settings]
) -> Iterator[str]:
    running = standby.ensure_running()  # a test may have stopped it
    url = make_url(database_url).set(port=running.port).render_as_string(hide_password=False)
    stave_env(replica_url=url, replica_max_lag_s=5)
    routing.reset()
    yield url
    routing.reset()


def add_template(engine: Engine) -> str:
    name = f"replica-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO style_template (id, name, description, parameters, created_at, "
                "updated_at) VALUES (gen_random_uuid(), :n, '', '{}', now(), now())"
            ),
            {"n": name},
        )
    return name


def visible(engine: Engine, name: str, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM style_template WHERE name = :n"), {"n": name}
            ).first()
        if found:
            return True
        time.sleep(0.1)
    return False


def settle(target: str, timeout_s: float = 30) -> routing.ReadRoute:
    """The route once it is `target` (replay catches up in its own time), or the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        routing.reset()
        route = routing.read_route()
        if route.target == target or time.monotonic() > deadline:
            return route
        time.sleep(0.2)


def test_reads_go_to_the_replica_and_writes_to_the_primary(
    replica_url: str, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    route = settle("replica")
    assert route.target == "replica", route.reason
    with route.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True
    name = add_template(engine)  # written on the primary …
    assert visible(routing.read_engine(), name)  # … read back from the replica
    with pytest.raises(DBAPIError, match="read-only transaction"):
        add_template(routing.read_engine())
    # The CLI's reports read there too (and work).
    result = stave(
        "report",
        "failures",
        "--json",
        cwd=tmp_path,
        env={"STAVE_DATABASE_URL": database_url, "STAVE_REPLICA_URL": replica_url},
    )
    assert result.returncode == 0, result.stderr
    doctor = stave(
        "doctor",
        "--json",
        cwd=tmp_path,
        env={"STAVE_DATABASE_URL": database_url, "STAVE_REPLICA_URL": replica_url},
    )
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["replica"]["outcome"] == "ok", checks["replica"]


def test_a_lagging_replica_sends_reads_to_the_primary_with_a_warning(
    replica_url: str,
    engine: Engine,
    stave_env: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stave_env(replica_url=replica_url, replica_max_lag_s=0.5)
    assert settle("replica").target == "replica"  # caught up with earlier writes
    replica_engine = routing.read_engine()
    with replica_engine.connect() as conn:
        conn.execute(text("SELECT pg_wal_replay_pause()"))
        conn.commit()
    try:
        name = add_template(engine)
        time.sleep(1.5)
        routing.reset()
        with caplog.at_level(logging.WARNING, logger="stave.infra.replica"):
            route = routing.read_route()
        assert route.target == "primary" and "behind" in route.reason, route.reason
        assert any("reading from the primary" in r.message for r in caplog.records)
        assert visible(route.engine, name, timeout_s=1)  # the primary has the new row
    finally:
        with replica_engine.connect() as conn:
            conn.execute(text("SELECT pg_wal_replay_resume()"))
            conn.commit()
    assert settle("replica").target == "replica"  # caught up: back on the replica


def test_a_down_replica_sends_reads_to_the_primary(
    replica_url: str, standby: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    standby.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="stave.infra.replica"):
            route = routing.read_route()
        assert route.target == "primary" and "is down" in route.reason, route.reason
        with route.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is False
        assert any("reading from the primary" in r.message for r in caplog.records)
        assert replica_url.split("@")[-1].split("/")[0] in route.reason  # names which replica
    finally:
        standby.ensure_running()
