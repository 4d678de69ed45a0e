"""A Prefect API outage costs no attempt: a drain whose batch cannot take its `gpu` slot hands
the batch back (pending, attempt not counted, an event saying why), waits for the API, and goes
on when it returns. Run for real: `stave server` (SQLite), `stave pools setup`, and `stave
run-pending` against it as subprocesses; the server is killed mid-job and started again after
far longer than the tasks' retries would last."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.test_deployments import operator_env, run_json, start, stop, wait_healthy, wait_until

__all__ = ["operator_env"]  # the fixture, used here

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_a_prefect_outage_mid_job_costs_no_attempt(
    operator_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    env = {
        **operator_env,
        # Two attempts 0.2 s apart: were the outage charged to the tasks, they would all fail
        # within a second of it.
        "STAVE_MAX_ATTEMPTS": "2",
        "STAVE_RETRY_BACKOFF_S": "0.2",
        "STAVE_BATCH_SIZE": "2",
        "STAVE_FINISHERS": "1",
        # Prefect's client retries a lost connection 2, 4, 8, 16 and 32 s apart before it
        # gives up (an outage shorter than that costs nothing at all); two tries here.
        "PREFECT_CLIENT_MAX_RETRIES": "2",
    }
    api = f"http://127.0.0.1:{env['STAVE_PREFECT_SERVER_PORT']}/api"
    env_api = {**env, "STAVE_PREFECT_API_URL": api}
    token = base64.b64encode(env["STAVE_PREFECT_API_AUTH_STRING"].encode()).decode()
    http = httpx.Client(base_url=api, headers={"Authorization": f"Basic {token}"}, timeout=30)
    server_log, drain_log = tmp_path / "server.log", tmp_path / "drain.log"
    rows = tmp_path / "prompts.jsonl"
    tag = tmp_path.name
    rows.write_text(
        "".join(
            json.dumps({"prompt": f"soft piano in C major, take {tag}-{i}", "seed": i}) + "\n"
            for i in range(16)
        )
    )
    server = start(["server"], env, server_log)
    drain = None
    try:
        wait_healthy(http, 90, "the Prefect server did not answer", server_log)
        run_json(["pools", "setup"], env, tmp_path)  # the `gpu` limit the drain takes slots of
        job = run_json(["submit", str(rows)], env, tmp_path)["job_id"]

        def published() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM generation_task WHERE job_id = :j "
                            "AND status = 'published'"
                        ),
                        {"j": job},
                    ).scalar_one()
                )

        def released() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM task_event e JOIN generation_task t "
                            "ON t.id = e.task_id WHERE t.job_id = :j "
                            "AND e.detail->>'released' LIKE 'the Prefect API is unreachable%'"
                        ),
                        {"j": job},
                    ).scalar_one()
                )

        drain = start(["run-pending", "--job", job, "--json"], env_api, drain_log)

        def holding_the_slot() -> bool:
            slots = http.get("/v2/concurrency_limits/gpu").json().get("active_slots", 0)
            return published() > 0 and slots > 0

        # The API goes away mid-job, while a batch holds the `gpu` slot: the restarted server
        # must give the slot back when its lease runs out (it once forgot the lease, kept in
        # its memory, and never freed the slot).
        wait_until(holding_the_slot, 120, "no batch held the gpu slot after a publish", drain_log)
        stop(server)
        wait_until(lambda: released() > 0, 90, "no batch was handed back for the outage", drain_log)
        time.sleep(8)  # far past two attempts' backoffs
        assert drain.poll() is None, drain_log.read_text()[-3000:]
        assert published() < 16
        server = start(["server"], env, server_log)
        drain.wait(timeout=180)
        output = drain_log.read_text()
        assert drain.returncode == 0, output[-4000:]
        assert "Traceback" not in output, output[-4000:]
    finally:
        if drain is not None:
            stop(drain)
        stop(server)
    with engine.connect() as conn:
        tasks = conn.execute(
            text("SELECT status, attempts FROM generation_task WHERE job_id = :j"), {"j": job}
        ).all()
        assets = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT a.task_id) FROM audio_asset a "
                "JOIN generation_task t ON t.id = a.task_id WHERE t.job_id = :j"
            ),
            {"j": job},
        ).one()
    assert sorted(set(tasks)) == [("published", 1)], tasks  # every clip once, on its first try
    assert released() >= 2  # at least one batch of two went back for the outage
    assert tuple(assets) == (16, 16)
