"""The fleet drill: Stave across "hosts" on one machine, with the failures a fleet meets.

Each host is its own processes, home and working directory; they share only what real hosts
share: the Prefect API (a `stave server` on Debian's PostgreSQL 15), Stave's database (a
pgserver cluster standing in for the production PostgreSQL with pgvector), the S3 server and
Redis. The three workers run Stave from the built wheel alone (no checkout on their path, an
empty working directory): two in the `gpu` pool under a global `gpu` limit of 2, one in the
`cpu` pool. An operator host submits a 200-clip job and triggers the runs. During the job: one
gpu host dies (SIGKILL of all its processes) mid-batch; the Prefect server restarts; the
database restarts; the other gpu host gets a rolling restart (SIGTERM to its main process, as
Kubernetes and systemd with KillMode=mixed send it). Meanwhile the cpu worker runs the nightly
backup and the archive.

Checked: every clip published exactly once (one asset, one embedding, one object per task),
nothing orphaned, the dead host's tasks reclaimed after their lease, the stopped host's batch
handed back at once (its run Cancelled, not Crashed), never more than two batches holding a
gpu slot at once (from the slot windows the workers record on each published event).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from stave.infra import embedded_pg, migrate
from stave.infra.db import ensure_database
from stave.infra.embedded_pg import EmbeddedPostgres
from tests.test_cli import STAVE
from tests.test_deployments import DEPLOYMENTS, run_deployment, start, stop, wait_healthy
from tests.utils.net import free_port

# Its own waits (a lease, restarts, 90 s before a dead host's run is Crashed) pass the suite's
# 300 s default under load.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.fleet,
    pytest.mark.timeout(480),
]

CLIPS = 200
LEASE_S = 20  # the task lease (the gpu slot's is 60 s: the Prefect server's floor)
ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@contextlib.contextmanager
def debian_binaries(bin_dir: Path) -> Iterator[None]:
    """Run EmbeddedPostgres from Debian's binaries (with pg_trgm) inside this block."""
    saved = embedded_pg.bin_dir
    embedded_pg.bin_dir = lambda: bin_dir  # type: ignore[assignment]
    try:
        yield
    finally:
        embedded_pg.bin_dir = saved  # type: ignore[assignment]


def tree(root: int) -> list[int]:
    """`root` and every process descended from it (a "host"'s processes)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its parent has not reaped it yet)


def signal_host(process: subprocess.Popen[bytes], sig: signal.Signals) -> list[int]:
    """`sig` to every process of a host, as systemd's stop (or the power cord) reaches them."""
    pids = tree(process.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


class Fleet:
    def __init__(self, tmp_path: Path, shared: dict[str, str], wheel_site: Path) -> None:
        self.tmp = tmp_path
        self.shared = shared
        self.wheel_site = wheel_site
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def host(self, name: str, **extra: str) -> tuple[dict[str, str], Path]:
        home, work = self.tmp / "hosts" / name, self.tmp / "hosts" / name / "work"
        work.mkdir(parents=True, exist_ok=True)
        return {**self.shared, "STAVE_HOME": str(home), **extra}, work

    def start_worker(self, name: str, pool: str) -> None:
        # Only the wheel on the path: no checkout, an empty working directory, its own home.
        env, work = self.host(name, PYTHONPATH=str(self.wheel_site))
        log = self.tmp / f"{name}.log"
        with open(log, "ab") as handle:
            self.workers[name] = subprocess.Popen(
                [sys.executable, "-m", "stave", "worker", "--pool", pool, "--name", name],
                env=env,
                cwd=work,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}"
            for log in sorted(self.tmp.glob("*.log"))
        )

    def operator(self, *args: str) -> Any:
        env, work = self.host("operator")
        done = subprocess.run(
            [STAVE, *args, "--json"], env=env, cwd=work, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return json.loads(done.stdout)


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    fleet: Fleet,
    detail: Callable[[], Any] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # a server or database mid-restart: ask again
            found = check()
            if found:
                return found
        time.sleep(0.5)
    said = ""
    with contextlib.suppress(Exception):
        said = f": {detail()}" if detail is not None else ""
    pytest.fail(f"{what} within {timeout} s{said}\n{fleet.logs()}")


def holding(engine: Engine, pids: list[int]) -> list[str]:
    """Task ids leased (running) by the flow-run processes among `pids`."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id::text, lease_owner FROM generation_task WHERE status = 'running'")
        ).all()
    return [r.id for r in rows if int(r.lease_owner.split(":")[-2]) in pids]


def most_at_once(windows: set[tuple[str, ...]]) -> int:
    """The most gpu-slot windows (host, pid, from, to) open at any one time."""
    edges = sorted(
        (datetime.fromisoformat(at), step)
        for (_, _, start, end) in windows
        for at, step in ((start, 1), (end, -1))
    )
    now = peak = 0
    for _, step in edges:  # at a tie, -1 sorts first: a slot handed over is not overlap
        now += step
        peak = max(peak, now)
    return peak


def test_the_fleet_drill(
    tmp_path: Path,
    debian_postgres_bin: Path,
    s3_endpoint: str,
    bucket_name: str,
    redis_url: str,
    wheel_site: Path,
) -> None:
    # Prefect's database: Debian's PostgreSQL (pg_trgm); Stave's: a pgserver cluster (pgvector).
    with debian_binaries(debian_postgres_bin):
        prefect_pg = EmbeddedPostgres(tmp_path / "prefect-pg", log_file=tmp_path / "ppg.txt")
        prefect_server = prefect_pg.ensure_running()
    ensure_database(prefect_server.url("postgres"), "prefect")
    prefect_url = prefect_server.url("prefect")
    stave_pg = EmbeddedPostgres(tmp_path / "stave-pg", log_file=tmp_path / "spg.txt")
    stave_server = stave_pg.ensure_running()
    ensure_database(stave_server.url("postgres"), "stave")
    database_url = stave_server.url("stave")
    migrate.upgrade(database_url)
    engine = create_engine(database_url, poolclass=NullPool)

    port = free_port()
    auth = f"ops:{uuid.uuid4().hex}"
    api = f"http://127.0.0.1:{port}/api"
    shared = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))},
        "STAVE_DATABASE_URL": database_url,
        "STAVE_S3_ENDPOINT": s3_endpoint,
        "STAVE_S3_ACCESS_KEY": "test-access",
        "STAVE_S3_SECRET_KEY": "test-secret",
        "STAVE_BUCKET": bucket_name,
        "STAVE_REDIS_URL": redis_url,
        "STAVE_PREFECT_API_URL": api,
        "STAVE_PREFECT_API_AUTH_STRING": auth,
        "STAVE_LEASE_S": str(LEASE_S),
        "STAVE_BATCH_SIZE": "10",
        "STAVE_DEFAULT_DURATION_S": "1",
        "STAVE_DEFAULT_STEPS": "2",
        "STAVE_PUBLISH_PAGES": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    fleet = Fleet(tmp_path, shared, wheel_site)
    server_env, _ = fleet.host(
        "prefect",
        STAVE_PREFECT_DATABASE_URL=prefect_url.replace("+psycopg", "+asyncpg"),
        STAVE_PREFECT_SERVER_PORT=str(port),
    )
    token = base64.b64encode(auth.encode()).decode()
    http = httpx.Client(base_url=api, headers={"Authorization": f"Basic {token}"}, timeout=30)
    server_log = tmp_path / "server.log"
    server = start(["server"], server_env, server_log)

    def state(run_id: str) -> str:
        return str(http.get(f"/flow_runs/{run_id}").json()["state"]["type"])

    def keep_two_runs(job_id: str, runs: list[str]) -> None:
        """As an operator (or the drain schedule) would: two runs of the job going, one per
        gpu host (a run that started while the server was down crashed at its start)."""
        live = [r for r in runs if state(r) not in ENDED]
        for _ in range(2 - len(live)):
            runs.append(run_deployment(http, "generate/bulk-generation", {"job_id": job_id}))

    def open_tasks(job_id: str) -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM generation_task WHERE job_id = :job "
                        "AND status IN ('pending', 'running')"
                    ),
                    {"job": job_id},
                ).scalar_one()
            )

    try:
        wait_healthy(http, 120, "the Prefect server on PostgreSQL did not answer", server_log)
        assert fleet.operator("pools", "setup", "--gpus", "2")["concurrency_limit"]["limit"] == 2
        assert len(fleet.operator("deploy")["deployments"]) == len(DEPLOYMENTS)
        fleet.start_worker("gpu-a", "gpu")
        fleet.start_worker("gpu-b", "gpu")
        fleet.start_worker("cpu-c", "cpu")

        prompts = tmp_path / "prompts.csv"
        keys = ["C", "D", "E", "F", "G", "A", "B"]
        prompts.write_text(
            "prompt,seed\n"
            + "".join(
                f'"fleet drill {i}: {["warm organ", "square lead", "bright bell"][i % 3]} '
                f'in {keys[i % 7]} minor, {80 + i % 60} bpm",{i}\n'
                for i in range(CLIPS)
            )
        )
        job_id = fleet.operator("submit", str(prompts))["job_id"]
        runs = [
            fleet.operator("run", "generate/bulk-generation", "-p", f"job_id={job_id}")[
                "flow_run_id"
            ]
            for _ in range(2)
        ]

        # 1. A gpu host dies mid-batch: every process of it, SIGKILL.
        def a_mid_batch() -> list[str]:
            return holding(engine, tree(fleet.workers["gpu-a"].pid))

        killed_tasks = wait_for(a_mid_batch, 180, "gpu-a never held a batch", fleet)
        killed_pids = signal_host(fleet.workers["gpu-a"], signal.SIGKILL)
        fleet.workers["gpu-a"].wait(timeout=30)
        killed_at = time.monotonic()

        # 2. The Prefect server restarts under the fleet (its state is in PostgreSQL).
        stop(server)
        server = start(["server"], server_env, server_log)
        wait_healthy(http, 120, "the Prefect server did not come back", server_log)

        # 3. Stave's database restarts (a failover, a minor-version upgrade).
        stave_pg.stop()
        stave_pg.ensure_running()

        # The dead host comes back. The cpu host's nightly backup and archive run meanwhile
        # (a run that starts while the server is down crashes at its start: Prefect's client
        # retries refused connections only once it has connected).
        fleet.start_worker("gpu-a", "gpu")
        cpu_runs = {
            "backup": run_deployment(
                http, "backup/nightly-backup", {"drill": False, "base": False}
            ),
            "archive": run_deployment(http, "archive/weekly-archive", {}),
        }

        # 4. A rolling restart of gpu-b: SIGTERM to all its processes mid-batch.
        def b_mid_batch() -> list[str]:
            keep_two_runs(job_id, runs)
            return holding(engine, tree(fleet.workers["gpu-b"].pid))

        handed = wait_for(b_mid_batch, 180, "gpu-b never held a batch", fleet)
        # SIGTERM to the worker's main process, as Kubernetes (and systemd with
        # KillMode=mixed) sends it: `stave worker` stops its flow runs before the worker.
        term_pids = tree(fleet.workers["gpu-b"].pid)
        fleet.workers["gpu-b"].send_signal(signal.SIGTERM)
        termed_at = time.monotonic()
        fleet.workers["gpu-b"].wait(timeout=90)
        # As systemd does, wait for every process of the host (its flow run hands back).
        wait_for(lambda: not any(alive(p) for p in term_pids), 90, "gpu-b did not stop", fleet)
        stopped_in = time.monotonic() - termed_at
        assert stopped_in < LEASE_S, f"gpu-b took {stopped_in:.1f} s to stop"
        # It left no lease behind: its batch was handed back (or finished, or, had the signal
        # landed while that batch was failing, went back as a retry); nothing waits out a lease.
        assert holding(engine, term_pids) == [], fleet.logs()
        with engine.connect() as conn:
            returned = set(
                conn.execute(
                    text(
                        "SELECT task_id::text FROM task_event WHERE from_status = 'running' "
                        "AND to_status IN ('pending', 'published') AND task_id = ANY(:ids)"
                    ),
                    {"ids": handed},
                ).scalars()
            )
        assert returned == set(handed), fleet.logs()
        fleet.start_worker("gpu-b", "gpu")

        # Until the job is done: the operator keeps two runs going (as the drain schedule would).
        def job_done() -> bool:
            keep_two_runs(job_id, runs)
            return open_tasks(job_id) == 0

        wait_for(job_done, 420, "the job did not finish", fleet)
        assert time.monotonic() - killed_at > LEASE_S  # the dead host's tasks waited out a lease

        def unended() -> dict[str, str]:
            states = {r: state(r) for r in [*runs, *cpu_runs.values()]}
            return {r: s for r, s in states.items() if s not in ENDED}

        wait_for(lambda: not unended(), 180, "runs did not end", fleet, unended)
        ended = {r: http.get(f"/flow_runs/{r}").json()["state"] for r in runs}
        # gpu-b's run said what happened to it; no run failed.
        cancelled = [s for s in ended.values() if s["type"] == "CANCELLED"]
        assert cancelled and all("stopped by SIGTERM" in s["message"] for s in cancelled), ended
        assert not [s for s in ended.values() if s["type"] == "FAILED"], ended
        # The dead host's run did not stay Running: no heartbeat, so the server crashed it.
        crashed = [s["message"] or "" for s in ended.values() if s["type"] == "CRASHED"]
        assert any("no heartbeat" in message for message in crashed), ended
        assert {name: state(r) for name, r in cpu_runs.items()} == {
            "backup": "COMPLETED",
            "archive": "COMPLETED",
        }, fleet.logs()

        with engine.connect() as conn:
            counts = conn.execute(
                text(
                    "SELECT count(*) AS tasks, "
                    "count(*) FILTER (WHERE t.status = 'published') AS published, "
                    "(SELECT count(*) FROM audio_asset a JOIN generation_task t2 "
                    " ON t2.id = a.task_id WHERE t2.job_id = :job) AS assets, "
                    "(SELECT count(*) FROM latent_embedding e JOIN audio_asset a "
                    " ON a.id = e.asset_id JOIN generation_task t3 ON t3.id = a.task_id "
                    " WHERE t3.job_id = :job) AS embeddings "
                    "FROM generation_task t WHERE t.job_id = :job"
                ),
                {"job": job_id},
            ).one()
            reclaimed = set(
                conn.execute(
                    text(
                        "SELECT task_id::text FROM task_event WHERE to_status = 'running' "
                        "AND (detail->>'reclaimed')::boolean AND task_id = ANY(:ids)"
                    ),
                    {"ids": killed_tasks},
                ).scalars()
            )
            published = conn.execute(
                text(
                    "SELECT e.detail FROM task_event e JOIN generation_task t ON t.id = e.task_id "
                    "WHERE t.job_id = :job AND e.to_status = 'published'"
                ),
                {"job": job_id},
            ).scalars()
            windows = {
                (
                    d["gpu_slot"]["host"],
                    str(d["gpu_slot"]["pid"]),
                    d["gpu_slot"]["from"],
                    d["gpu_slot"]["to"],
                )
                for d in published
            }
            code = set(
                conn.execute(
                    text(
                        "SELECT DISTINCT provenance->>'code_version' FROM generation_task "
                        "WHERE job_id = :job"
                    ),
                    {"job": job_id},
                ).scalars()
            )
        assert tuple(counts) == (CLIPS, CLIPS, CLIPS, CLIPS), counts
        assert reclaimed == set(killed_tasks)  # the dead host's batch, taken over after its lease
        assert len(windows) >= 2 and most_at_once(windows) <= 2, sorted(windows)
        # The workers ran the wheel's copy (a checkout would say git:…).
        assert code and all(c.startswith("stave:") for c in code), code
        assert killed_pids and term_pids

        # One object per clip, nothing orphaned.
        swept = fleet.operator("gc")
        assert swept["orphans"] == [] and swept["scanned"] >= CLIPS, swept
        assert len(fleet.operator("backup", "list")) >= 1
        # Prefect's own state lives in that PostgreSQL.
        prefect_engine = create_engine(prefect_url, poolclass=NullPool)
        with prefect_engine.connect() as conn:
            pools = set(conn.execute(text("SELECT name FROM work_pool")).scalars())
            trgm = conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname='pg_trgm'"))
            assert {"gpu", "cpu"} <= pools and trgm.scalar_one() == 1
        prefect_engine.dispose()
    finally:
        for worker in fleet.workers.values():
            stop(worker)
            signal_host(worker, signal.SIGKILL)  # flow runs in a session of their own
        stop(server)
        http.close()
        engine.dispose()
        stave_pg.stop()
        with debian_binaries(debian_postgres_bin):
            prefect_pg.stop()
