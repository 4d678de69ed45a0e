"""The boundary between the model's process and the finishing processes, under faults: a
finisher killed mid-batch, a stop with batches waiting for a finisher, the pool's own
accounting. The real model, database, S3 server (through a proxy that slows its PUTs) and
finishing processes; Prefect's harness for the flows."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.cli.common import flow_summary
from stave.infra import stop
from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.tasks import finishing
from stave.tasks.gc import sweep
from tests.test_generate_flow import TINY, job_tasks, unique_rows
from tests.utils.flaky_proxy import FlakyProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def slow_store(
    s3_endpoint: str, bucket_name: str, stave_env: Callable[..., Settings]
) -> Iterator[tuple[FlakyProxy, Callable[..., Settings]]]:
    """The S3 server behind a proxy whose PUTs can be slowed; settings pointing at it."""
    with FlakyProxy(s3_endpoint, failures=0) as proxy:

        def configure(**values: object) -> Settings:
            return stave_env(
                **{**TINY, **values},
                s3_endpoint=proxy.endpoint,
                s3_access_key="test-access",
                s3_secret_key="test-secret",
                bucket=bucket_name,
            )

        yield proxy, configure
    # The next test's finishers start from its own settings (sizes included).
    finishing.close_finishers()


def trail(engine: Engine, task_id: uuid.UUID) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT to_status, coalesce(detail->>'error_class', detail->>'released') "
                "FROM task_event WHERE task_id = :t ORDER BY id"
            ),
            {"t": task_id},
        ).all()
    return [(r[0], r[1]) for r in rows]


def no_orphans(engine: Engine, settings: Settings) -> None:
    store = make_object_store(settings)
    found = sweep(engine, store, env_name=settings.env, delete=False, grace=timedelta(0))
    assert found.orphans == []


def test_a_finisher_killed_mid_batch_costs_a_retry_never_a_duplicate_or_an_orphan(
    prefect_api: str, engine: Engine, slow_store: tuple[FlakyProxy, Callable[..., Settings]]
) -> None:
    from stave.flows.generate import generate, run_pending

    proxy, configure = slow_store
    settings = configure(finishers=1)
    finishing.close_finishers()  # this test's sizes
    job = generate(rows=unique_rows(4), run=False)["job_id"]
    pool = finishing.finishers(settings)
    killed: list[int] = []

    def kill_once_a_clip_is_stored() -> None:
        proxy.put_delay_s, before = 0.3, proxy.puts
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            holders = pool.holders()
            if holders and proxy.puts > before:  # a clip of the batch is in the store
                os.kill(holders[0], signal.SIGKILL)
                killed.append(holders[0])
                proxy.put_delay_s = 0.0
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_once_a_clip_is_stored)
    watcher.start()
    summary = run_pending(job_id=uuid.UUID(job))
    watcher.join()
    assert killed, "the finisher was never seen holding the batch"
    assert summary["published"] == 4 and summary["retried_now"] == 4
    tasks = job_tasks(engine, job)
    assert all(t.status == "published" and t.attempts == 2 for t in tasks)
    assert len({t.asset for t in tasks}) == 4  # one clip per task, none twice
    assert trail(engine, tasks[0].id) == [
        ("pending", None),
        ("running", None),
        ("pending", "internal"),
        ("running", None),
        ("published", None),
    ]
    with engine.connect() as conn:
        message = conn.execute(
            text(
                "SELECT detail->>'message' FROM task_event WHERE task_id = :t "
                "AND detail->>'error_class' = 'internal'"
            ),
            {"t": tasks[0].id},
        ).scalar_one()
    assert f"finishing process {killed[0]} died (killed by signal 9)" in message
    no_orphans(engine, settings)
    assert killed[0] not in pool.holders()


def test_a_stop_hands_back_the_batches_no_finisher_has_taken_and_publishes_the_rest(
    prefect_api: str, engine: Engine, slow_store: tuple[FlakyProxy, Callable[..., Settings]]
) -> None:
    """One slow finisher, room for three batches: a stop finds one batch being finished and
    two waiting. The waiting ones go back to the queue at once (attempt not counted); the one
    being finished is published; a re-run publishes the rest, each clip once."""
    from stave.flows.generate import generate, run_pending

    proxy, configure = slow_store
    settings = configure(finishers=1, finish_in_flight=3, batch_size=1)
    finishing.close_finishers()
    job = generate(rows=unique_rows(5), run=False)["job_id"]
    pool = finishing.finishers(settings)
    proxy.put_delay_s = 1.0

    def stop_when_three_are_handed_over() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (pool.in_flight == 3 and pool.holders()):
            time.sleep(0.01)
        stop.request(signal.SIGTERM)

    watcher = threading.Thread(target=stop_when_three_are_handed_over)
    watcher.start()
    try:
        first = flow_summary(run_pending(job_id=uuid.UUID(job), return_state=True))
    finally:
        watcher.join()
        stop.reset()
        proxy.put_delay_s = 0.0
    assert first["published_now"] == 1 and first["handed_back_now"] == 2, first
    tasks = job_tasks(engine, job)
    handed = [t for t in tasks if ("pending", "stop requested") in trail(engine, t.id)]
    assert len(handed) == 2 and all(t.status == "pending" and t.attempts == 0 for t in handed)
    second = run_pending(job_id=uuid.UUID(job))
    assert second["published"] == 5
    tasks = job_tasks(engine, job)
    assert all(t.status == "published" and t.attempts == 1 for t in tasks)
    assert len({t.asset for t in tasks}) == 5
    no_orphans(engine, settings)
