"""Sharing the queue: classes, fair share by weight, aging, quotas, pause/resume/cancel, a job's
place and ETA, and claims that stay exactly-once under concurrency. Against a real PostgreSQL
(a database of this module's own, migrated to head, so no other test's tasks are in its
queue); a worker is simulated by claiming batches and marking them published."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from stave.infra import migrate
from stave.infra.db import ensure_database
from stave.infra.embedded_pg import RunningServer
from stave.infra.settings import Settings
from stave.tasks import queue
from stave.tasks.intake import rows_from_parameter
from stave.tasks.submission import submit

pytestmark = pytest.mark.integration

POLICY = queue.QueuePolicy(half_life_s=3600, aging_s=0)


@pytest.fixture(scope="module")
def db(pg_server: RunningServer) -> Iterator[Engine]:
    name = f"fairq_{uuid.uuid4().hex[:8]}"
    ensure_database(pg_server.url("postgres"), name)
    url = pg_server.url(name)
    migrate.upgrade(url)
    engine = create_engine(url, pool_size=8)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def empty_queue(db: Engine) -> None:
    """Each test starts with nothing waiting (earlier tests' leftovers cancelled)."""
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE generation_task SET status = 'cancelled' WHERE status "
                "IN ('pending', 'running')"
            )
        )
        conn.execute(text("DELETE FROM queue_stream"))
        conn.execute(text("DELETE FROM user_share"))


def job(db: Engine, settings: Settings, user: str, n: int, priority: str = "standard") -> Any:
    tag = uuid.uuid4().hex[:8]
    rows = [{"prompt": f"{user} {tag} {i}", "seed": i, "user_id": user} for i in range(n)]
    done = submit(db, rows_from_parameter(rows), settings, priority=priority)
    assert done.job_id is not None
    return done.job_id


def work(
    db: Engine, batch: int, batches: int, policy: queue.QueuePolicy = POLICY, **kw: Any
) -> list[queue.ClaimedTask]:
    """One worker: claim `batches` batches of `batch`, publishing each before the next."""
    claimed: list[queue.ClaimedTask] = []
    for _ in range(batches):
        got = queue.claim(db, "worker-1", batch, 600, policy=policy, **kw)
        if not got:
            break
        claimed += got
        publish(db, got)
    return claimed


def publish(db: Engine, tasks: list[queue.ClaimedTask]) -> None:
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE generation_task SET status = 'published', lease_owner = NULL, "
                "lease_expires_at = NULL, finished_at = now() WHERE id = ANY(:ids)"
            ),
            {"ids": [t.id for t in tasks]},
        )


def users(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"user-{chr(97 + i)}-{tag}" for i in range(n)]


def test_an_interactive_job_overtakes_a_bulk_one_in_the_next_batch(
    db: Engine, settings: Settings
) -> None:
    a, b = users(2)
    bulk = job(db, settings, a, 20_000, "bulk")
    first = work(db, 64, 3)
    assert {t.job_id for t in first} == {bulk}
    demo = job(db, settings, b, 10, "interactive")
    # The very next batch has B's ten clips: within the next two batches' time.
    following = work(db, 64, 1)
    assert Counter(t.job_id for t in following) == {demo: 10, bulk: 54}
    assert queue.places(db, POLICY)[bulk].ahead == 0


@pytest.mark.parametrize(("weight_a", "share_a"), [(1.0, 0.5), (2.0, 2 / 3)])
def test_two_bulk_users_split_the_fleet_by_their_weights(
    db: Engine, settings: Settings, weight_a: float, share_a: float
) -> None:
    """A submitted first and B second, 10,000 rows each: over every window of 200 published
    clips A's share is its weight's, within 10 points."""
    a, b = users(2)
    queue.set_weight(db, a, weight_a)
    job(db, settings, a, 10_000, "bulk")
    job(db, settings, b, 10_000, "bulk")
    order = [t.user_id for t in work(db, 64, 40)]
    assert len(order) == 2560
    for start in range(0, len(order) - 200 + 1, 50):
        window = Counter(order[start : start + 200])
        assert abs(window[a] / 200 - share_a) <= 0.10, (start, window)


def test_a_paused_job_gets_nothing_and_resumed_goes_on(db: Engine, settings: Settings) -> None:
    a, b = users(2)
    held = job(db, settings, a, 30)
    other = job(db, settings, b, 30)
    queue.pause(db, held)
    got = work(db, 16, 10)
    assert {t.job_id for t in got} == {other} and len(got) == 30
    assert queue.claim(db, "w", 16, 600, policy=POLICY) == []
    assert queue.places(db, POLICY)[held].ahead is None  # paused: no place
    queue.resume(db, held)
    assert {t.job_id for t in work(db, 16, 10)} == {held}


def test_aging_lifts_a_starved_bulk_stream(db: Engine, settings: Settings) -> None:
    a, b = users(2)
    busy = job(db, settings, a, 200, "standard")
    starved = job(db, settings, b, 20, "bulk")
    aging = queue.QueuePolicy(half_life_s=3600, aging_s=1.0)
    assert {t.job_id for t in work(db, 16, 2, aging)} == {busy}  # standard first
    # A worker claims on: the standard stream, served at every claim, never ages; the bulk
    # one waits past the aging time, is claimed as standard, and then has its user's share.
    started, served_at = time.monotonic(), None
    while served_at is None and time.monotonic() - started < 5:
        batch = work(db, 16, 1, aging)
        if starved in {t.job_id for t in batch}:
            served_at = time.monotonic() - started
        time.sleep(0.05)
    assert served_at is not None and served_at < 2.0, served_at


def test_a_user_at_quota_never_blocks_another(db: Engine, settings: Settings) -> None:
    a, b = users(2)
    job(db, settings, a, 200, "interactive")
    job(db, settings, b, 50, "bulk")
    capped = queue.QueuePolicy(half_life_s=3600, aging_s=0, user_max_running=40)
    first = queue.claim(db, "w1", 64, 600, policy=capped)
    counts = Counter(t.user_id for t in first)
    assert counts[a] == 40 and counts[b] == 24  # A at its quota; B fills the batch
    second = queue.claim(db, "w2", 64, 600, policy=capped)
    assert Counter(t.user_id for t in second) == {b: 16}  # A at quota: skipped; B up to its
    publish(db, first)
    third = queue.claim(db, "w3", 64, 600, policy=capped)
    assert Counter(t.user_id for t in third) == {a: 40, b: 10}


def test_cancel_ends_the_pending_tasks_and_running_ones_finish(
    db: Engine, settings: Settings
) -> None:
    (a,) = users(1)
    doomed = job(db, settings, a, 20)
    running = queue.claim(db, "w", 5, 600, policy=POLICY)
    assert queue.cancel(db, doomed, by="test") == 15
    with db.connect() as conn:
        counts = dict(
            conn.execute(
                text("SELECT status, count(*) FROM generation_task WHERE job_id = :j GROUP BY 1"),
                {"j": doomed},
            ).all()
        )
        events = conn.execute(
            text(
                "SELECT count(*) FROM task_event e JOIN generation_task t ON t.id = e.task_id "
                "WHERE t.job_id = :j AND e.to_status = 'cancelled' AND e.detail->>'by' = 'test'"
            ),
            {"j": doomed},
        ).scalar_one()
    assert counts == {"cancelled": 15, "running": 5} and events == 15
    assert queue.claim(db, "w", 16, 600, policy=POLICY) == []
    publish(db, running)  # the running ones finish as usual


def test_retries_and_hand_backs_come_back_into_their_stream(db: Engine, settings: Settings) -> None:
    (a,) = users(1)
    mine = job(db, settings, a, 6)
    first = queue.claim(db, "w", 6, 600, policy=POLICY)
    assert queue.claim(db, "w2", 6, 600, policy=POLICY) == []  # nothing left to claim
    queue.fail(db, "w", [t.id for t in first[:2]], "storage_unavailable", "down", backoff_s=0.3)
    queue.release(db, "w", [t.id for t in first[2:4]], "stop requested")
    again = queue.claim(db, "w2", 6, 600, policy=POLICY)
    assert {t.id for t in again} == {t.id for t in first[2:4]}  # the retries wait their backoff
    time.sleep(0.35)
    later = queue.claim(db, "w2", 6, 600, policy=POLICY)
    assert {t.id for t in later} == {t.id for t in first[:2]}
    with db.connect() as conn:
        pending = conn.execute(
            text("SELECT pending FROM queue_stream WHERE job_id = :j"), {"j": mine}
        ).scalar_one()
    assert pending == 0


def test_concurrent_claimers_never_take_a_task_twice(db: Engine, settings: Settings) -> None:
    names = users(5)
    for user in names:
        for priority in ("bulk", "standard"):
            job(db, settings, user, 120, priority)
    taken: list[uuid.UUID] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claimer(worker: str) -> None:
        try:
            while got := queue.claim(db, worker, 16, 600, policy=POLICY):
                with lock:
                    taken.extend(t.id for t in got)
        except BaseException as err:  # a deadlock, say: the test fails with it
            errors.append(err)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(taken) == 1200 and len(set(taken)) == 1200


def test_a_job_s_place_and_eta_follow_the_fleet_s_pace(db: Engine, settings: Settings) -> None:
    a, b = users(2)
    first = job(db, settings, a, 100, "standard")
    second = job(db, settings, b, 50, "bulk")
    with db.begin() as conn:  # a drain made 10 clips a second lately
        conn.execute(
            text(
                "INSERT INTO drain_run (id, worker, host, batches, clips, model_s, wall_s, "
                "ended) VALUES (:id, 'w', 'h', 10, 1000, 90, 100, false)"
            ),
            {"id": uuid.uuid4()},
        )
    places = queue.places(db, POLICY)
    assert places[first].ahead == 0 and places[second].ahead == 100
    assert places[second].eta_s == pytest.approx(15.0, rel=0.01)  # 150 tasks at 10 a second
