"""`stave run`: a deployment triggered from the command line against a real Prefect server,
its parameters typed and checked by the deployment's schema before anything is sent, and the
run followed to its end (here the test plays the worker and ends the runs)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.test_cli import assert_one_line_error, stave

pytestmark = pytest.mark.integration


def _deployment(tag: str) -> uuid.UUID:
    from prefect import get_client
    from prefect.utilities.callables import parameter_schema

    from stave.flows.backup import nightly_backup

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("backup")
        return client.create_deployment(
            flow_id=flow_id,
            name=f"run-{tag}",
            entrypoint="stave.flows.backup:nightly_backup",
            parameter_openapi_schema=parameter_schema(nightly_backup).model_dump_for_openapi(),
            parameters={},
        )


def _end_runs(deployment_id: uuid.UUID, state: str, stop: threading.Event) -> None:
    """The worker's part: move each new run of the deployment to `state`."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.states import Completed, Failed

    final = Completed() if state == "Completed" else Failed(message="the dump failed: disk full")
    with get_client(sync_client=True) as client:
        while not stop.is_set():
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            for run in runs:
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(run.id, final, force=True)
            time.sleep(0.3)


def test_stave_run_checks_parameters_then_triggers_and_follows(
    prefect_api: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    deployment_id = _deployment(tag)
    name = f"backup/run-{tag}"
    env = {"STAVE_HOME": str(tmp_path / "home"), "STAVE_PREFECT_API_URL": prefect_api}

    wrong_type = stave("run", name, "-p", "drill=maybe", cwd=tmp_path, env=env)
    assert wrong_type.returncode == 1 and "'drill'" in assert_one_line_error(wrong_type)
    unknown = stave("run", name, "-p", "dril=false", cwd=tmp_path, env=env)
    assert "has no parameter 'dril'" in assert_one_line_error(unknown)
    missing = stave("run", "backup/nope", cwd=tmp_path, env=env)
    assert "no deployment 'backup/nope'" in assert_one_line_error(missing)

    made = stave("run", name, "-p", "drill=false", "-p", "base=false", "--json", cwd=tmp_path,
                 env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["parameters"] == {"drill": False, "base": False}
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(created["flow_run_id"]))
    assert run.parameters == {"drill": False, "base": False}

    for state, code in (("Completed", 0), ("Failed", 1)):
        stop = threading.Event()
        worker = threading.Thread(target=_end_runs, args=(deployment_id, state, stop))
        worker.start()
        try:
            watched = stave("run", name, "--watch", "--json", cwd=tmp_path, env=env)
        finally:
            stop.set()
            worker.join()
        assert watched.returncode == code, watched.stderr
        if code == 0:
            assert json.loads(watched.stdout)["state"] == "Completed"
        else:
            assert "ended Failed: the dump failed: disk full" in assert_one_line_error(watched)
