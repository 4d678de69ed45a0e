"""prefect.yaml and the operator's path: server, pools, deploy, worker, a run through the API.

The end-to-end test runs what docs/production.md's operator path runs, as subprocesses: `stave
server` (SQLite, with an API auth string), `stave pools setup`, `stave deploy`, `stave worker
--gpu 0`, `stave prompts upload`, then triggers the bulk-generation deployment over HTTP with a
file key and with rows, and checks the clips are published in the session's database.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.test_cli import STAVE, assert_one_line_error, stave
from tests.utils.net import free_port

ROOT = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((ROOT / "stave" / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


def load_entrypoint(entrypoint: str) -> Any:
    module, name = entrypoint.split(":")
    return getattr(importlib.import_module(module), name)


def flows_in_the_package() -> set[str]:
    """Every @flow defined in stave.flows, as a module entrypoint (`stave.flows.x:fn`)."""
    import pkgutil

    from prefect import Flow

    import stave.flows

    found = set()
    for info in pkgutil.walk_packages(stave.flows.__path__, "stave.flows."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, Flow) and value.fn.__module__ == info.name:
                found.add(f"{info.name}:{value.fn.__name__}")
    return found


def test_every_flow_is_deployed_and_every_entrypoint_is_a_flow_with_a_described_form() -> None:
    from prefect import Flow
    from prefect.utilities.callables import parameter_schema

    # Derived, not listed: a new flow without a deployment (or the reverse) fails here.
    assert {d["entrypoint"] for d in DEPLOYMENTS.values()} == flows_in_the_package()
    assert SPEC["pull"] == []  # entrypoints are package modules: workers need no checkout
    for name, spec in DEPLOYMENTS.items():
        flow = load_entrypoint(spec["entrypoint"])
        assert isinstance(flow, Flow), name
        assert spec["work_pool"]["name"] in ("gpu", "cpu"), name
        schema = parameter_schema(flow).model_dump()
        for param, field in schema["properties"].items():
            # The UI shows a form: every parameter typed and described.
            assert field.get("description"), f"{name}: {param} has no description"
            assert field.get("type") or field.get("anyOf") or field.get("$ref"), (name, param)


def test_schedules_and_no_credentials() -> None:
    raw = (ROOT / "stave" / "prefect.yaml").read_text()
    assert DEPLOYMENTS["nightly-backup"]["schedules"][0]["cron"] == "0 2 * * *"
    assert DEPLOYMENTS["nightly-backup"]["schedules"][0]["timezone"] == "{{ $STAVE_TIMEZONE }}"
    assert DEPLOYMENTS["weekly-archive"]["schedules"][0]["cron"].endswith("* * 0")
    assert DEPLOYMENTS["generation-drain"]["schedules"][0]["interval"] <= 600
    for manual in ("bulk-generation", "latent-backfill", "train"):
        assert "schedules" not in DEPLOYMENTS[manual]
    for needle in ("password", "secret", "access_key", "postgresql://", "@"):
        assert needle not in raw.lower(), needle


# -- the operator's path, for real ----------------------------------------------------------------


def start(
    args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [STAVE, *args],
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the server's and worker's children stop too
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    # Prefect's worker exits on the second SIGTERM; anything left gets SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # flow-run children of a stopped worker


@pytest.fixture
def alert_hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP receiver standing in for the operator's chat or pager: its URL (with a
    secret token in the path, as such URLs have) and the JSON bodies it received."""
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append({"path": self.path, **json.loads(body or b"{}")})
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = uuid.uuid4().hex
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/{token}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def operator_env(database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))}
    yield {
        **clean,
        "STAVE_HOME": str(tmp_path / "home"),
        "STAVE_DATABASE_URL": database_url,
        "STAVE_PREFECT_SERVER_PORT": str(free_port()),
        "STAVE_PREFECT_API_AUTH_STRING": f"ops:{uuid.uuid4().hex}",
        "STAVE_TIMEZONE": "Europe/Paris",
        "STAVE_DEFAULT_DURATION_S": "1",
        "STAVE_DEFAULT_STEPS": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout} s; log:\n{log.read_text()[-4000:]}")


def wait_healthy(http: httpx.Client, timeout: float, what: str, log: Path) -> None:
    """Until the Prefect server at `http`'s base URL answers its health check."""

    def healthy() -> bool:
        try:
            return http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout, what, log)


def run_json(args: list[str], env: dict[str, str], cwd: Path) -> Any:
    done = subprocess.run(
        [STAVE, *args, "--json"], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(480)  # every deployment's run, on two cores: past the 300 s default
def test_server_pools_deploy_worker_and_a_bulk_generation_run(
    operator_env: dict[str, str],
    alert_hook: tuple[str, list[dict[str, Any]]],
    engine: Engine,
    wheel_site: Path,
    tmp_path: Path,
) -> None:
    hook_url, alerts = alert_hook
    env = {**operator_env, "STAVE_ALERT_WEBHOOK_URL": hook_url}
    api = f"http://127.0.0.1:{env['STAVE_PREFECT_SERVER_PORT']}/api"
    token = base64.b64encode(env["STAVE_PREFECT_API_AUTH_STRING"].encode()).decode()
    http = httpx.Client(base_url=api, headers={"Authorization": f"Basic {token}"}, timeout=60)
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    cpu_log = tmp_path / "cpu-worker.log"
    server = start(["server"], env, server_log)
    worker = cpu_worker = None
    try:
        wait_healthy(http, 60, "the Prefect server did not answer", server_log)
        # The auth string is required: a client without it is turned away.
        assert httpx.post(f"{api}/flows/filter", json={}).status_code == 401

        # doctor checks the API with the auth string, and names a wrong one.
        checks = run_json(["doctor"], {**env, "STAVE_PREFECT_API_URL": api}, tmp_path)
        doctor = {c["name"]: c for c in checks}
        assert doctor["prefect"]["outcome"] == "ok", doctor["prefect"]
        wrong = {**env, "STAVE_PREFECT_API_URL": api, "STAVE_PREFECT_API_AUTH_STRING": "ops:no"}
        refused = stave("doctor", cwd=tmp_path, env=wrong)
        assert refused.returncode == 1 and "HTTP 401" in refused.stdout + refused.stderr
        assert "ops:no" not in refused.stdout + refused.stderr

        first = run_json(["pools", "setup"], env, tmp_path)
        assert sorted(first["created_pools"]) == ["cpu", "gpu"]
        assert first["concurrency_limit"]["action"] == "created"
        again = run_json(["pools", "setup", "--gpus", "2"], env, tmp_path)
        assert again["created_pools"] == [] and sorted(again["existing_pools"]) == ["cpu", "gpu"]
        assert again["concurrency_limit"] == {"name": "gpu", "limit": 2, "action": "updated"}
        # Doctor compares the limit with the gpu pool's online workers (their heartbeats, as
        # three hosts' workers send them): a limit below them is a warning, not a failure.
        with_api = {**env, "STAVE_PREFECT_API_URL": api}
        for host in ("gpu-host-a", "gpu-host-b"):
            http.post("/work_pools/gpu/workers/heartbeat", json={"name": host}).raise_for_status()
        sized = {c["name"]: c for c in run_json(["doctor"], with_api, tmp_path)}["gpu-limit"]
        assert sized["outcome"] == "ok", sized
        http.post("/work_pools/gpu/workers/heartbeat", json={"name": "gpu-host-c"})
        short = stave("doctor", cwd=tmp_path, env=with_api)
        assert short.returncode == 0, short.stdout + short.stderr
        (warned,) = [line for line in short.stdout.splitlines() if line.startswith("WARN")]
        assert warned.split(None, 2)[1:] == [
            "gpu-limit",
            "2 slot(s) of limit gpu, 3 online worker(s) in pool gpu: at most 2 batch(es) at a "
            "time across the fleet (fix: stave pools setup --gpus <GPUs in the fleet>)",
        ]

        applied = run_json(["deploy"], env, tmp_path)
        deployed = {f"{d['flow']}/{d['name']}": d for d in applied["deployments"]}
        assert applied["alerts"]["webhook"] is True
        assert set(applied["alerts"]["automations"].values()) == {"created"}
        assert len(deployed) == len(DEPLOYMENTS)
        assert deployed["backup/nightly-backup"]["schedule"] == "cron 0 2 * * * Europe/Paris"
        assert deployed["generate/bulk-generation"]["pool"] == "gpu"
        assert deployed["archive/weekly-archive"]["pool"] == "cpu"
        assert deployed["run-pending/generation-drain"]["schedule"] == "every 300 s"
        # Applying again updates in place: still one of each.
        again_applied = run_json(["deploy"], env, tmp_path)
        assert len(again_applied["deployments"]) == len(DEPLOYMENTS)
        assert set(again_applied["alerts"]["automations"].values()) == {"updated"}
        automations = {a["name"]: a for a in http.post("/automations/filter", json={}).json()}
        # A run is watched from its Running event (the server's own), not only from its first
        # heartbeat: a host that dies before that heartbeat arrives is caught too.
        zombie = automations["stave: mark unresponsive runs crashed"]["trigger"]
        assert set(zombie["after"]) == {"prefect.flow-run.heartbeat", "prefect.flow-run.Running"}
        late = automations["stave: no nightly backup completed"]["trigger"]
        assert (late["posture"], late["within"]) == ("Proactive", 26 * 3600.0)
        assert late["expect"] == ["prefect.flow-run.Completed"]

        # A run whose host died before its first heartbeat reached the server: Running (as its
        # engine sets it; no worker is up yet to take it), then nothing. Checked further down.
        # (A deployment without a concurrency limit: a forced state takes no slot.)
        orphan = run_deployment(
            http, "generate/bulk-generation", {"rows": [{"prompt": "orphaned run", "seed": 1}]}
        )
        forced = http.post(
            f"/flow_runs/{orphan}/set_state", json={"state": {"type": "RUNNING"}, "force": True}
        )
        assert forced.json()["status"] == "ACCEPT", forced.text

        # The server's scheduler makes runs for the schedules: nightly backups at 02:00 in the
        # configured timezone. (With SQLAlchemy 2.1 it silently made none.)
        backup_id = http.get("/deployments/name/backup/nightly-backup").json()["id"]

        def scheduled() -> list[dict[str, Any]]:
            body = {
                "deployments": {"id": {"any_": [backup_id]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            }
            return list(http.post("/flow_runs/filter", json=body).json())

        wait_until(lambda: bool(scheduled()), 60, "no nightly backup was scheduled", server_log)
        paris = ZoneInfo("Europe/Paris")
        for run in scheduled():
            local = datetime.fromisoformat(run["expected_start_time"]).astimezone(paris)
            assert (local.hour, local.minute) == (2, 0), run["expected_start_time"]

        tag = uuid.uuid4().hex[:8]
        prompts = tmp_path / "prompts.csv"
        prompts.write_text(
            "prompt,seed\n"
            f'"warm organ chords in A major, 90 bpm {tag}",1\n'
            f"square lead melody in E minor 140 bpm {tag},2\n"
            f"unquoted comma, so one field too many {tag},3\n"
        )
        uploaded = run_json(["prompts", "upload", str(prompts)], env, tmp_path)
        assert uploaded["file_key"].startswith("dev/prompts/") and uploaded["rows"] == 2
        assert uploaded["rejected"] == 1 and uploaded["rejections"][0]["row"] == 3
        assert tag not in uploaded["file_key"]  # object keys never carry user text

        # The workers run Stave from the built wheel (first on their path: no checkout), in an
        # empty folder, beside another project's top-level `models`, `tasks`, … packages (a
        # shared worker): Stave, one package, never imports them.
        other = unrelated_packages(tmp_path / "other-project")
        worker_env = {**env, "PYTHONPATH": f"{wheel_site}{os.pathsep}{other}"}
        elsewhere = tmp_path / "worker-host"
        elsewhere.mkdir()
        # Two runs at once (the gpu limit has two slots): the smallest cases overlap.
        worker = start(
            ["worker", "--gpu", "0", "--limit", "2"], worker_env, worker_log, cwd=elsewhere
        )
        cpu_worker = start(["worker", "--pool", "cpu"], worker_env, cpu_log, cwd=elsewhere)
        deployment = http.get("/deployments/name/generate/bulk-generation").json()
        runs = [
            http.post(
                f"/deployments/{deployment['id']}/create_flow_run",
                json={"parameters": parameters},
            ).json()["id"]
            for parameters in (
                {"file_key": uploaded["file_key"], "submitted_by": "e2e"},
                {"rows": [{"prompt": f"bright bell arpeggio in D minor {tag}", "seed": 3}]},
            )
        ]

        def state(run_id: str) -> str:
            try:
                return str(http.get(f"/flow_runs/{run_id}").json()["state"]["type"])
            except httpx.TimeoutException:  # a busy SQLite server on two cores: ask again
                return "UNKNOWN"

        wait_until(
            lambda: all(state(r) in ("COMPLETED", "FAILED", "CRASHED") for r in runs),
            240,
            "the deployment runs did not finish",
            worker_log,
        )
        assert [state(r) for r in runs] == ["COMPLETED", "COMPLETED"], worker_log.read_text()
        with engine.connect() as conn:
            published = conn.execute(
                text(
                    "SELECT t.status, a.object_key, e.id IS NOT NULL AS embedded "
                    "FROM generation_task t LEFT JOIN audio_asset a ON a.task_id = t.id "
                    "LEFT JOIN latent_embedding e ON e.asset_id = a.id "
                    "WHERE t.prompt LIKE :tag"
                ),
                {"tag": f"%{tag}%"},
            ).all()
        assert len(published) == 3
        assert all(r.status == "published" and r.object_key and r.embedded for r in published)
        with engine.connect() as conn:  # made by the wheel's copy (a checkout says git:…)
            made_by = conn.execute(
                text(
                    "SELECT DISTINCT provenance->>'code_version' FROM generation_task "
                    "WHERE prompt LIKE :tag"
                ),
                {"tag": f"%{tag}%"},
            ).scalars()
            assert [v.split(":")[0] for v in made_by] == ["stave"]
        # The run's progress artifact reached the server.
        artifacts = http.post(
            "/artifacts/filter", json={"artifacts": {"type": {"any_": ["progress"]}}}
        ).json()
        assert any(a["flow_run_id"] in runs and a["data"] == 100.0 for a in artifacts)

        with engine.connect() as conn:
            e2e_job = conn.execute(
                text("SELECT job_id FROM generation_task WHERE prompt LIKE :tag LIMIT 1"),
                {"tag": f"%{tag}%"},
            ).scalar_one()
        # Every other deployment's smallest case, through the same workers.
        smallest = {
            "job-control/job-control": {"job_id": str(e2e_job), "action": "resume"},
            "run-pending/generation-drain": {"limit": 1},
            "backfill-embeddings/latent-backfill": {"dry_run": True},
            "backup/nightly-backup": {
                "drill": False,
                "retention": False,
                "base": False,
            },
            "archive/weekly-archive": {"dry_run": True},
            "train/train": {
                "run_name": f"e2e-{tag}",
                "clips": 6,
                "clip_seconds": 3.0,
                "ae_steps": 2,
                "embedding_steps": 1,
                "denoiser_steps": 2,
                "device": "cpu",
                "overrides": {"ae_batch": 2, "denoiser_batch": 2, "denoiser_frames": 32},
            },
        }
        assert set(smallest) | {"generate/bulk-generation"} == set(deployed)
        others = {
            name: run_deployment(http, name, parameters) for name, parameters in smallest.items()
        }
        wait_until(
            lambda: all(state(r) in ("COMPLETED", "FAILED", "CRASHED") for r in others.values()),
            300,
            "the other deployments' runs did not finish",
            worker_log,
        )
        ended = {name: state(r) for name, r in others.items()}
        logs = worker_log.read_text()[-3000:] + cpu_log.read_text()[-3000:]
        assert set(ended.values()) == {"COMPLETED"}, (ended, logs)
        # Runs are named by what they do, not at random.
        named = {n: http.get(f"/flow_runs/{r}").json()["name"] for n, r in others.items()}
        assert named["backfill-embeddings/latent-backfill"].startswith("backfill-current-")
        assert named["train/train"] == f"train-e2e-{tag}"
        assert named["backup/nightly-backup"].startswith("backup-20")

        # Alerts: every run so far succeeded and none was posted. A backup that fails (the
        # cpu worker's object store is down at 02:00) posts exactly one message, naming the
        # deployment and the cause, within a minute.
        # The orphaned run was crashed by the server (no heartbeat, counted from its Running
        # state), and that was alerted; no other run was.
        wait_until(lambda: state(orphan) == "CRASHED", 120, "the orphan stayed Running", server_log)
        crash = http.get(f"/flow_runs/{orphan}").json()["state"]["message"]
        assert "no heartbeat for 90 s" in crash, crash

        def about(run: str) -> list[dict[str, Any]]:
            return [a for a in list(alerts) if f"/runs/flow-run/{run}" in a.get("body", "")]

        def others() -> list[dict[str, Any]]:  # (a repeat of the orphan's may come any time)
            return [a for a in list(alerts) if a not in about(orphan)]

        wait_until(lambda: bool(about(orphan)), 60, "the crash was not alerted", server_log)
        assert all("Crashed" in a["subject"] for a in about(orphan)), about(orphan)
        assert others() == []
        stop(cpu_worker)
        store_down = {**worker_env, "STAVE_S3_ENDPOINT": f"127.0.0.1:{free_port()}"}
        store_down["STAVE_S3_MAX_RETRIES"] = "0"
        cpu_worker = start(["worker", "--pool", "cpu"], store_down, cpu_log, cwd=elsewhere)
        failing = run_deployment(http, "backup/nightly-backup", {"drill": False})
        wait_until(
            lambda: state(failing) in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"),
            120,
            f"the backup did not end ({state(failing)})",
            cpu_log,
        )
        assert state(failing) == "FAILED", http.get(f"/flow_runs/{failing}").json()["state"]
        failed_at = time.monotonic()
        wait_until(lambda: bool(others()), 60, "no alert was posted", server_log)
        time.sleep(3)  # a second message would have come by now
        # Prefect delivers at least once (a retried action posts again), so repeats are one
        # alert when they carry its id; a second alert with another id is a second alert.
        said = [(a.get("subject"), a.get("body")) for a in others()]
        ids = [re.findall(r"^Alert id: (\S+)$", a.get("body", ""), re.MULTILINE) for a in others()]
        assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 1, said
        alert = others()[0]
        assert time.monotonic() - failed_at < 60
        assert alert["path"] == urlsplit(hook_url).path and alert["source"] == "stave"
        assert "backup/nightly-backup" in alert["subject"] and "Failed" in alert["subject"]
        assert "is the object store up" in alert["body"]  # the cause
        assert f"/runs/flow-run/{failing}" in alert["body"]  # the link to the run
        # The webhook's URL (its token) is in no log and no artifact.
        secret = urlsplit(hook_url).path.rsplit("/", 1)[-1]
        for log in (server_log, worker_log, cpu_log, *tmp_path.rglob("*.log")):
            assert secret not in log.read_text(errors="replace"), log
        artifacts = http.post("/artifacts/filter", json={}).text
        assert secret not in artifacts
    finally:
        for running in (worker, cpu_worker):
            if running is not None:
                stop(running)
        stop(server)
        http.close()


def run_deployment(http: httpx.Client, name: str, parameters: dict[str, Any]) -> str:
    """A run of deployment `name` (flow/deployment) with `parameters`; its id."""
    deployment = http.get(f"/deployments/name/{name}").json()
    # SQLite under a busy server answers 503 (or nothing, for a while) now and then: ask again,
    # with one idempotency key, so a request that did get through makes no second run.
    body = {"parameters": parameters, "idempotency_key": uuid.uuid4().hex}
    for _ in range(20):
        try:
            made = http.post(f"/deployments/{deployment['id']}/create_flow_run", json=body)
        except httpx.TimeoutException:
            continue
        if made.status_code != 503:
            break
        time.sleep(1)
    assert made.status_code == 201, (name, made.status_code, made.text[:2000])
    return str(made.json()["id"])


def unrelated_packages(folder: Path) -> Path:
    """Another project's generic top-level packages, each failing loudly if imported."""
    for name in ("models", "tasks", "flows", "infra", "generator", "sql"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('another project\\'s {name}: Stave must not import it')\n"
        )
    return folder


@pytest.mark.integration
def test_server_refuses_a_postgresql_without_pg_trgm(database_url: str, tmp_path: Path) -> None:
    # pgserver's PostgreSQL has no contrib modules: Prefect's migrations would fail half-way.
    result = stave(
        "server",
        cwd=tmp_path,
        env={
            "STAVE_PREFECT_DATABASE_URL": database_url.replace(
                "postgresql+psycopg://", "postgresql://"
            )
        },
    )
    line = assert_one_line_error(result)
    assert "pg_trgm" in line and result.returncode == 1


def test_worker_and_deploy_name_a_server_that_is_down(tmp_path: Path) -> None:
    env = {"STAVE_PREFECT_SERVER_PORT": str(free_port())}
    for args in (["worker", "--gpu", "0"], ["deploy"], ["pools", "setup"]):
        line = assert_one_line_error(stave(*args, cwd=tmp_path, env=env))
        assert "is not answering" in line and "stave server" in line


def test_worker_refuses_a_cpu_pool_pinned_to_a_gpu(tmp_path: Path) -> None:
    line = assert_one_line_error(stave("worker", "--gpu", "1", "--pool", "cpu", cwd=tmp_path))
    assert "--gpu pins a worker of the gpu pool" in line
