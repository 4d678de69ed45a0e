"""`stave submit --priority`, `stave jobs`, `stave job ID` with its controls, `stave share`:
as an operator types them, against the session's database."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.settings import Settings
from tests.test_cli import stave

pytestmark = pytest.mark.integration


def test_an_operator_classes_pauses_resumes_and_cancels_a_job(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    env = {"STAVE_HOME": str(tmp_path / "home"), "STAVE_DATABASE_URL": database_url}
    tag = uuid.uuid4().hex[:8]
    user = f"cli-{tag}"
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "prompt,seed,user_id\n" + "".join(f"bell {tag} {i},{i},{user}\n" for i in range(5))
    )
    queued = stave("submit", str(prompts), "--priority", "bulk", "--json", cwd=tmp_path, env=env)
    assert queued.returncode == 0, queued.stderr
    job = json.loads(queued.stdout)["job_id"]

    shown = stave("job", job, "--json", cwd=tmp_path, env=env)
    detail = json.loads(shown.stdout)
    assert detail["priority"] == "bulk" and detail["place"]["pending"] == 5

    said = stave("job", job, "--pause", cwd=tmp_path, env=env)
    assert said.returncode == 0 and "paused" in said.stdout
    listed = stave("jobs", "--json", cwd=tmp_path, env=env)
    row = next(r for r in json.loads(listed.stdout) if r["id"] == job)
    assert row["paused"] and row["ahead"] is None
    assert stave("job", job, "--resume", cwd=tmp_path, env=env).returncode == 0
    raised = stave("job", job, "--set-priority", "interactive", cwd=tmp_path, env=env)
    assert "class interactive" in raised.stdout and "class       interactive" in raised.stdout

    both = stave("job", job, "--pause", "--cancel", cwd=tmp_path, env=env)
    assert both.returncode == 2  # one change at a time

    cancelled = stave("job", job, "--cancel", cwd=tmp_path, env=env)
    assert "5 pending task(s) cancelled" in cancelled.stdout
    with engine.connect() as conn:
        statuses = (
            conn.execute(
                text("SELECT DISTINCT status FROM generation_task WHERE job_id = :j"), {"j": job}
            )
            .scalars()
            .all()
        )
    assert statuses == ["cancelled"]

    assert stave("share", "set", user, "2.5", cwd=tmp_path, env=env).returncode == 0
    shares = json.loads(stave("share", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert {"user_id": user, "weight": 2.5} == {
        k: v
        for k, v in next(s for s in shares if s["user_id"] == user).items()
        if k in ("user_id", "weight")
    }
    refused = stave("share", "set", user, "0", cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "must be a number above 0" in refused.stderr


def test_the_job_control_flow_changes_a_job_from_the_ui(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings]
) -> None:
    from stave.flows.generate import generate
    from stave.flows.queue import job_control

    stave_env()
    tag = uuid.uuid4().hex[:8]
    queued = generate(rows=[{"prompt": f"drone {tag} {i}"} for i in range(3)], run=False)
    job = uuid.UUID(queued["job_id"])
    with engine.connect() as conn:
        priority = conn.execute(
            text("SELECT priority FROM generation_job WHERE id = :j"), {"j": job}
        ).scalar_one()
    assert priority == "standard"  # started by hand (not by a schedule)
    done = job_control(job_id=job, action="set-priority", priority="interactive")
    assert done["priority"] == "interactive" and done["place"]["priority"] == "interactive"
    assert job_control(job_id=job, action="pause")["place"]["ahead"] is None
    assert job_control(job_id=job, action="cancel")["cancelled"] == 3
