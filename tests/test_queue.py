"""Submission and the leased queue against the real PostgreSQL: idempotency, defaults,
SKIP LOCKED claims, lease expiry, attempts, backoff and fencing."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from stave.infra.settings import Settings
from stave.models.base import new_id
from stave.tasks import queue
from stave.tasks.intake import rows_from_parameter
from stave.tasks.submission import submit
from tests.utils.net import free_port

pytestmark = pytest.mark.integration


def submit_rows(engine: Engine, settings: Settings, rows: list[dict[str, Any]], **kw: Any) -> Any:
    return submit(engine, rows_from_parameter(rows), settings, **kw)


def statuses(engine: Engine, job_id: uuid.UUID) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text("SELECT status, count(*) FROM generation_task WHERE job_id = :j GROUP BY 1"),
                {"j": job_id},
            ).all()
        )


def test_submission_is_one_job_and_resubmission_is_a_no_op(
    engine: Engine, settings: Settings
) -> None:
    rows = [{"prompt": f"bell melody {i}", "duration_s": 1, "user_id": "u-idem"} for i in range(5)]
    rows.append({"prompt": "", "user_id": "u-idem"})
    first = submit_rows(engine, settings, rows)
    assert first.created and first.accepted == 5 and len(first.rejected) == 1
    again = submit_rows(engine, settings, rows)
    assert not again.created
    assert again.job_id == first.job_id
    assert again.already_submitted == 5 and again.accepted == 0
    with engine.connect() as conn:
        jobs = conn.execute(
            text("SELECT count(*) FROM generation_job WHERE id = :j"), {"j": first.job_id}
        ).scalar_one()
        job = conn.execute(
            text("SELECT rejections, accepted_rows FROM generation_job WHERE id = :j"),
            {"j": first.job_id},
        ).one()
        events = conn.execute(
            text(
                "SELECT count(*) FROM task_event e JOIN generation_task t ON t.id = e.task_id "
                "WHERE t.job_id = :j AND e.to_status = 'pending'"
            ),
            {"j": first.job_id},
        ).scalar_one()
    assert jobs == 1 and events == 5
    assert job.accepted_rows == 5
    assert job.rejections == [{"row": 6, "field": "prompt", "reason": "is empty"}]
    assert statuses(engine, first.job_id) == {"pending": 5}


def test_defaults_come_from_settings_preferences_template_then_row(
    engine: Engine, settings: Settings
) -> None:
    user, template = f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO user_preference (id, user_id, parameters) "
                'VALUES (:id, :u, \'{"steps": 7, "guidance": 5.0}\')'
            ),
            {"id": new_id(), "u": user},
        )
        conn.execute(
            text(
                "INSERT INTO style_template (id, name, description, parameters) "
                'VALUES (:id, :n, \'\', \'{"guidance": 9.0, "scheduler": "heun"}\')'
            ),
            {"id": new_id(), "n": template},
        )
    result = submit_rows(
        engine,
        settings,
        [
            {"prompt": "plain", "user_id": user},
            {"prompt": "styled", "user_id": user, "style_template": template},
            {"prompt": "own", "user_id": user, "style_template": template, "guidance": 1.5},
            {"prompt": "missing template", "user_id": user, "style_template": "no-such"},
        ],
    )
    assert [(r.row, r.field) for r in result.rejected] == [(4, "style_template")]
    with engine.connect() as conn:
        params = dict(
            conn.execute(
                text("SELECT prompt, parameters FROM generation_task WHERE job_id = :j"),
                {"j": result.job_id},
            ).all()
        )
    assert params["plain"]["steps"] == 7 and params["plain"]["guidance"] == 5.0
    assert params["plain"]["scheduler"] == settings.default_scheduler
    assert params["plain"]["duration_s"] == settings.default_duration_s
    assert params["styled"]["guidance"] == 9.0 and params["styled"]["scheduler"] == "heun"
    assert params["own"]["guidance"] == 1.5
    # Every task records a seed from the start, drawn when the row gave none.
    assert all(0 <= p["seed"] < 2**63 for p in params.values())


def test_a_template_with_bad_values_rejects_the_rows_that_use_it(
    engine: Engine, settings: Settings
) -> None:
    template = f"t-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO style_template (id, name, description, parameters) "
                "VALUES (:id, :n, '', '{\"steps\": 999}')"
            ),
            {"id": new_id(), "n": template},
        )
    result = submit_rows(engine, settings, [{"prompt": "x", "style_template": template}])
    assert result.accepted == 0
    assert result.rejected[0].field == "steps"
    assert f"from style template '{template}'" in result.rejected[0].reason


def test_prompt_revisions_chain_through_parent_revision(engine: Engine, settings: Settings) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    first = submit_rows(engine, settings, [{"prompt": "organ chords", "user_id": user}])
    with engine.connect() as conn:
        root = conn.execute(
            text("SELECT prompt_revision_id FROM generation_task WHERE job_id = :j"),
            {"j": first.job_id},
        ).scalar_one()
    edited = submit_rows(
        engine,
        settings,
        [
            {"prompt": "warm organ chords", "user_id": user, "parent_revision": str(root)},
            {"prompt": "organ chords", "user_id": user, "parent_revision": str(root), "seed": 3},
            {"prompt": "stolen", "user_id": "someone-else", "parent_revision": str(root)},
        ],
    )
    assert [(r.row, r.field) for r in edited.rejected] == [(3, "parent_revision")]
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.prompt, r.id, r.parent_id FROM generation_task t "
                "JOIN prompt_revision r ON r.id = t.prompt_revision_id WHERE t.job_id = :j"
            ),
            {"j": edited.job_id},
        ).all()
    by_prompt = {r.prompt: r for r in rows}
    assert by_prompt["warm organ chords"].parent_id == root
    assert by_prompt["organ chords"].id == root  # unchanged text: the same revision


def test_concurrent_claimers_never_share_a_task(engine: Engine, settings: Settings) -> None:
    job = submit_rows(engine, settings, [{"prompt": f"p{i}"} for i in range(60)]).job_id
    claimed: dict[str, list[uuid.UUID]] = {}
    barrier = threading.Barrier(6)

    def worker(name: str) -> None:
        barrier.wait()
        mine: list[uuid.UUID] = []
        while batch := queue.claim(engine, name, 4, 60, job):
            mine += [t.id for t in batch]
        claimed[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [task for tasks in claimed.values() for task in tasks]
    assert len(every) == 60 and len(set(every)) == 60
    assert sum(1 for tasks in claimed.values() if tasks) > 1
    assert statuses(engine, job) == {"running": 60}


def test_an_expired_lease_is_claimed_again_and_the_old_worker_is_fenced_off(
    engine: Engine, settings: Settings
) -> None:
    job = submit_rows(engine, settings, [{"prompt": f"a {uuid.uuid4()}"}, {"prompt": "b"}]).job_id
    dead = queue.claim(engine, "dead-worker", 10, 0.2, job)
    assert len(dead) == 2 and all(t.attempts == 1 for t in dead)
    assert queue.claim(engine, "other", 10, 60, job) == []  # leases still valid
    time.sleep(0.3)
    again = queue.claim(engine, "alive", 10, 60, job)
    assert {t.id for t in again} == {t.id for t in dead}
    assert all(t.reclaimed and t.attempts == 2 for t in again)
    # The first worker wakes up and tries to record a failure: nothing changes.
    assert (
        queue.fail(engine, "dead-worker", [t.id for t in dead], "internal", "x", backoff_s=0) == {}
    )
    assert statuses(engine, job) == {"running": 2}


def test_last_attempt_with_an_expired_lease_fails_as_timeout(
    engine: Engine, settings: Settings
) -> None:
    job = submit_rows(engine, settings, [{"prompt": f"a {uuid.uuid4()}"}]).job_id
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE generation_task SET max_attempts = 1 WHERE job_id = :j"), {"j": job}
        )
    queue.claim(engine, "w", 1, 0.1, job)
    time.sleep(0.2)
    assert queue.claim(engine, "w2", 1, 60, job) == []
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT status, error_class, error_message FROM generation_task WHERE job_id = :j"
            ),
            {"j": job},
        ).one()
    assert (row.status, row.error_class) == ("failed", "timeout")
    assert "lease of w expired" in row.error_message


def test_retryable_failures_back_off_then_fail_for_good(engine: Engine, settings: Settings) -> None:
    job = submit_rows(engine, settings, [{"prompt": f"a {uuid.uuid4()}"}]).job_id
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE generation_task SET max_attempts = 2 WHERE job_id = :j"), {"j": job}
        )
    (task,) = queue.claim(engine, "w", 1, 60, job)
    assert queue.fail(engine, "w", [task.id], "storage_unavailable", "down", backoff_s=0.3) == {
        task.id: "pending"
    }
    assert queue.claim(engine, "w", 1, 60, job) == []  # backing off
    state = queue.job_state(engine, job)
    assert state.counts == {"pending": 1} and 0 < queue.seconds_until(state.next_due) <= 0.3
    time.sleep(0.35)
    (task,) = queue.claim(engine, "w", 1, 60, job)
    assert task.attempts == 2
    assert queue.fail(engine, "w", [task.id], "storage_unavailable", "down", backoff_s=0) == {
        task.id: "failed"
    }
    # A class that cannot get better fails at once.
    other = submit_rows(engine, settings, [{"prompt": f"b {uuid.uuid4()}"}]).job_id
    (task,) = queue.claim(engine, "w", 1, 60, other)
    assert queue.fail(engine, "w", [task.id], "model_error", "boom", backoff_s=0) == {
        task.id: "failed"
    }
    assert queue.requeue_failed(engine, other, by="test") == 1
    (task,) = queue.claim(engine, "w", 1, 60, other)
    assert task.attempts == 1
    with engine.connect() as conn:
        trail = conn.execute(
            text("SELECT from_status, to_status FROM task_event WHERE task_id = :t ORDER BY id"),
            {"t": task.id},
        ).all()
    assert [tuple(r) for r in trail] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "failed"),
        ("failed", "pending"),
        ("pending", "running"),
    ]


def test_a_database_restarting_between_batches_does_not_fail_the_run_over_its_progress() -> None:
    """The drain's progress figure is best effort: with the database gone for a moment (here,
    nothing listening on its port) it is skipped with a warning, not raised (which failed the
    run and stranded the batch just made until its lease ran out: the fleet drill's database
    restart once landed there)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from stave.flows.steps import progress

    gone = create_engine(
        f"postgresql+psycopg://stave@127.0.0.1:{free_port()}/stave",
        poolclass=NullPool,
        connect_args={"connect_timeout": 2},
    )
    said: list[str] = []

    class RunLog:  # what the drain writes to its run's log
        def warning(self, message: str, *args: Any) -> None:
            said.append(message % args)

    progress.show(None, gone, None, 10, 5, progress.DrainStats(), RunLog())
    assert len(said) == 1 and said[0].startswith("progress not updated: "), said


def test_giving_a_batch_back_rides_out_a_database_restart(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording a batch's failure (or handing it back on a stop) tries again while the database
    is unavailable, so the batch returns to the queue at once and the run goes on; past the
    last try the error is raised (the leases then expire, as after a crash)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from stave.flows import drain

    monkeypatch.setattr(drain, "DATABASE_RETRY_S", (0.05, 0.05))
    gone = create_engine(
        f"postgresql+psycopg://stave@127.0.0.1:{free_port()}/stave",
        poolclass=NullPool,
        connect_args={"connect_timeout": 2},
    )
    said: list[str] = []

    class RunLog:
        def warning(self, message: str, *args: Any) -> None:
            said.append(message % args)

    tries = iter([gone, gone, engine])  # down twice, then back

    def write() -> int:
        with next(tries).connect() as conn:
            return int(conn.execute(text("SELECT 1")).scalar_one())

    assert drain._riding_out_a_restart(write, RunLog()) == 1
    assert len(said) == 2 and all("database unavailable" in line for line in said), said

    def never() -> int:
        with gone.connect() as conn:
            return int(conn.execute(text("SELECT 1")).scalar_one())

    with pytest.raises(OperationalError):
        drain._riding_out_a_restart(never, RunLog())
