"""Ctrl-C and SIGTERM stop the long commands within seconds, with the batch in flight finished
or handed back (its tasks pending again at once), a summary of what was done, and exit 130 /
143; a re-run finishes the job without waiting for any lease. A second Ctrl-C stops at once.
Real signals to real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from stave.infra import migrate
from stave.infra.db import ensure_database
from stave.infra.embedded_pg import RunningServer
from tests.test_cli import STAVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_S = 600  # as in production: a re-run that waited for a lease would time out below


@pytest.fixture
def env(database_url: str, prefect_api: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAVE_")}
    return {
        **clean,
        "STAVE_HOME": str(tmp_path / "home"),
        "STAVE_DATABASE_URL": database_url,
        # Long enough that a signal lands while a batch is being made.
        "STAVE_DEFAULT_DURATION_S": "6",
        "STAVE_DEFAULT_STEPS": "24",
        "STAVE_BATCH_SIZE": "4",
        "STAVE_LEASE_S": str(LEASE_S),
        "PREFECT_API_URL": prefect_api,
    }


def statuses(engine: Engine, tag: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT status, count(*) FROM generation_task WHERE prompt LIKE :t GROUP BY status"
            ),
            {"t": f"%{tag}%"},
        ).all()
    return {status: int(n) for status, n in rows}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(what)


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [STAVE, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def prompts(tmp_path: Path, tag: str, n: int) -> Path:
    path = tmp_path / "prompts.csv"
    rows = "".join(f"warm organ chords in A minor {i} {tag},{i}\n" for i in range(n))
    path.write_text("prompt,seed\n" + rows)
    return path


def stop_while_generating(
    engine: Engine, process: subprocess.Popen[str], tag: str, signum: int
) -> tuple[int, str, str, float]:
    """Signal the process once a batch is being made; its exit code, output and seconds."""
    wait_for(lambda: statuses(engine, tag).get("running", 0) > 0, 180, "no batch started")
    time.sleep(0.5)  # into the batch's denoiser steps
    sent = time.monotonic()
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err, time.monotonic() - sent


def test_ctrl_c_and_sigterm_hand_back_the_batch_and_a_rerun_finishes_at_once(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    file = prompts(tmp_path, tag, 12)

    code, out, err, took = stop_while_generating(
        engine, start(["generate", str(file)], env, tmp_path), tag, signal.SIGINT
    )
    assert code == 130, err
    assert took < 15, f"took {took:.1f} s to stop"
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "stave: error: stopped by SIGINT"
    assert "run-pending --job" in err  # what finishes the job
    assert "published" in out  # the summary of what was done
    after_int = statuses(engine, tag)
    assert after_int.get("running", 0) == 0, after_int  # handed back or finished: no lease held
    assert sum(after_int.values()) == 12 and after_int.get("pending", 0) > 0, after_int

    job = json.loads(
        subprocess.run(
            [STAVE, "submit", str(file), "--json"], env=env, cwd=tmp_path, capture_output=True
        ).stdout
    )["job_id"]
    code, out, err, took = stop_while_generating(
        engine, start(["run-pending", "--job", job], env, tmp_path), tag, signal.SIGTERM
    )
    assert code == 143, err
    assert took < 15 and "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "stave: error: stopped by SIGTERM"
    assert statuses(engine, tag).get("running", 0) == 0

    # Nothing waits out a lease: the re-run finishes every clip well inside one.
    started = time.monotonic()
    done = subprocess.run(
        [STAVE, "run-pending", "--job", job, "--json"],
        env={**env, "STAVE_DEFAULT_DURATION_S": "1", "STAVE_DEFAULT_STEPS": "2"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=LEASE_S / 2,
    )
    assert done.returncode == 0, done.stderr
    assert statuses(engine, tag) == {"published": 12}
    assert time.monotonic() - started < LEASE_S / 2
    with engine.connect() as conn:
        released = conn.execute(
            text(
                "SELECT count(*) FROM task_event e JOIN generation_task t ON t.id = e.task_id "
                "WHERE t.prompt LIKE :t AND e.detail ? 'released'"
            ),
            {"t": f"%{tag}%"},
        ).scalar_one()
    assert released > 0  # at least one batch was handed back, not finished


def test_a_second_ctrl_c_stops_at_once(env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    process = start(["generate", str(prompts(tmp_path, tag, 8))], env, tmp_path)
    wait_for(lambda: statuses(engine, tag).get("running", 0) > 0, 180, "no batch started")
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130 and time.monotonic() - sent < 10
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("stave: error: stopped by SIGINT")


def test_a_warm_drain_serves_a_trickle_with_one_model_load_and_stops_on_sigterm(
    env: dict[str, str], pg_server: RunningServer, tmp_path: Path
) -> None:
    # Its own database: a follower drains every job, and other tests leave work queued.
    name = f"follow_{uuid.uuid4().hex[:8]}"
    ensure_database(pg_server.url("postgres"), name)
    url = pg_server.url(name)
    migrate.upgrade(url)
    engine = create_engine(url, poolclass=NullPool)
    fast = {
        **env,
        "STAVE_DATABASE_URL": url,
        "STAVE_DEFAULT_DURATION_S": "1",
        "STAVE_DEFAULT_STEPS": "2",
        "STAVE_FOLLOW_POLL_S": "0.2",
    }
    tag = uuid.uuid4().hex[:8]
    follower = start(["run-pending", "--follow", "--json"], fast, tmp_path)
    try:
        for part, rows in enumerate((2, 1, 1)):  # a trickle: each part after the last is done
            file = tmp_path / f"part{part}.csv"
            file.write_text(
                "prompt,seed\n"
                + "".join(f"bright bell arpeggio {part}.{i} {tag},{i}\n" for i in range(rows))
            )
            queued = subprocess.run(
                [STAVE, "submit", str(file)], env=fast, cwd=tmp_path, capture_output=True
            )
            assert queued.returncode == 0, queued.stderr
            total = sum((2, 1, 1)[: part + 1])
            wait_for(
                lambda total=total: statuses(engine, tag).get("published", 0) == total,
                120,
                f"the follower did not publish part {part}",
            )
        assert follower.poll() is None  # still up, between runs
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)
        engine.dispose()
    assert follower.returncode == 0, err
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM")
    runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(runs) >= 3 and sum(r["published_now"] for r in runs) == 4  # a flow run per part
    assert statuses(engine, tag) == {"published": 4}
    with engine.connect() as conn:  # one process made them all: one model load
        pids = conn.execute(
            text(
                "SELECT DISTINCT (e.detail->'gpu_slot'->>'pid')::int FROM task_event e "
                "JOIN generation_task t ON t.id = e.task_id "
                "WHERE t.prompt LIKE :t AND e.to_status = 'published'"
            ),
            {"t": f"%{tag}%"},
        ).scalars()
        assert list(pids) == [follower.pid]
