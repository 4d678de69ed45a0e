"""Months unattended: a soak run that proves every long-lived resource stays bounded.

One `stave server` (Prefect's, on PostgreSQL as in production when Debian's postgresql-15 is
installed; on SQLite without it or with --prefect-sqlite), one long-lived `stave run-pending
--follow` (the warm drain) and one `stave worker --pool gpu` (serving the bulk-generation
deployment) run for the whole soak, on the embedded PostgreSQL (archiving its WAL) and the
filesystem store, as an operator runs them. Small jobs (`--clips` one-second clips each) arrive
day by day: most queued by a submission (the warm drain takes them), every
`--deployment-every`th triggered through the deployment over the API (the worker runs it). The
calendar moves one day at the end of each simulated day: every timestamp in Stave's database and
every file's time under the home and the store goes back a day, and the backups' manifests with
them, so each day's operations see the age things would have. Each day runs what the schedules
run, through their deployments on a `stave worker --pool cpu`: the nightly backup (a dump, its
drill, a base backup, then retention of dumps, base backups and the WAL before the oldest kept
one), every `--week`th day the weekly archive past `--hot-days`; and `stave gc --delete`.
Prefect's own retention (its vacuum service, STAVE_PREFECT_RETENTION_DAYS) keeps real time and
is not moved: its database is reported, not judged. (On SQLite that database then grows all run
long, ~1.5 MB a simulated day, and the server's memory with it; in real time the vacuum bounds
both.)

Sampled at the end of each day: each long-lived process's RSS, threads and open files; the
home by folder; the store by prefix; the database's size and dead tuples; Prefect's database.
Printed: the table of samples, and each figure's slope after warm-up, per 1,000 jobs. Fails
when: a long-lived process's RSS grows 20 MB or more per 1,000 jobs, or its threads or open
files grow (more than 2 per 1,000 jobs); a bounded folder or prefix (its rule stated in the
table) is, at its largest over the last week, more than 25% above its largest over the first
week its rule holds; an archived WAL segment older than the oldest kept base backup's start
(WAL is bounded by time, not size: a week of archival writes more than a quiet one).

Run: .venv/bin/python bench/soak.py [--jobs 1000] [--days 30] [--clips 2] [--keep-days 7]
     [--hot-days 7] [--deployment-every 25]
(a throwaway STAVE_HOME unless --home; about 20 minutes at the defaults on 2 cores.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from soak_probe import Probe, Sample, judge, print_table  # noqa: E402

STAVE = str(Path(sys.executable).parent / "stave")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--keep-days", type=int, default=7)
    parser.add_argument("--hot-days", type=int, default=7)
    parser.add_argument("--deployment-every", type=int, default=25)
    parser.add_argument("--week", type=int, default=7, help="days between weekly operations")
    parser.add_argument("--warmup", type=float, default=0.25, help="share of days not judged")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the samples here")
    parser.add_argument(
        "--report-only",
        action="append",
        default=[],
        metavar="ROLE",
        help="a long-lived process to report but not judge (a short run: Prefect's own server "
        "fills its caches over its first week, the 30-day run judges it after that)",
    )
    parser.add_argument(
        "--prefect-pg-bin",
        type=Path,
        default=_debian_postgres(),
        help="Prefect's server on a PostgreSQL (production's) from these binaries, which need "
        "pg_trgm (default: Debian's postgresql-15 when installed, as .ci/run installs it)",
    )
    parser.add_argument(
        "--prefect-sqlite",
        action="store_true",
        help="Prefect's server on SQLite (the one-machine default) instead",
    )
    args = parser.parse_args()
    if args.prefect_sqlite:
        args.prefect_pg_bin = None
    print(
        "Prefect's server on "
        + (f"PostgreSQL ({args.prefect_pg_bin})" if args.prefect_pg_bin else "SQLite"),
        flush=True,
    )
    home = args.home or Path(tempfile.mkdtemp(prefix="stave-soak-"))
    soak = Soak(home, args)
    try:
        samples = soak.run()
    finally:
        soak.stop()
    print_table(samples)
    verdicts = judge(
        samples,
        warmup=args.warmup,
        keep_days=args.keep_days,
        week=args.week,
        report_only=set(args.report_only),
    )
    if args.json:
        args.json.write_text(json.dumps([s.__dict__ for s in samples], indent=1, default=str))
    if any(not v.ok for v in verdicts):
        print("\nFAIL")
        sys.exit(1)
    print("\nPASS")


class Soak:
    def __init__(self, home: Path, args: argparse.Namespace) -> None:
        self.home, self.args = home, args
        port = _free_port()
        keep = str(args.keep_days)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))},
            "STAVE_HOME": str(home),
            "STAVE_DEFAULT_DURATION_S": "1",
            "STAVE_DEFAULT_STEPS": "2",
            "STAVE_BATCH_SIZE": "8",
            "STAVE_FINISHERS": "1",
            "STAVE_PREFECT_SERVER_PORT": str(port),
            "STAVE_GALLERY_KEEP_DAYS": keep,
            "STAVE_DATA_DOCS_KEEP_DAYS": keep,
            "STAVE_BACKUP_KEEP_DAILY": keep,
            "STAVE_BACKUP_KEEP_WEEKLY": "1",
            "STAVE_BACKUP_KEEP_MONTHLY": "1",
            "STAVE_BASE_KEEP_DAILY": "1",
            "STAVE_BASE_KEEP_WEEKLY": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        self.api = f"http://127.0.0.1:{port}/api"
        self.with_api = {**self.env, "STAVE_PREFECT_API_URL": self.api}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = home / "soak-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.jobs = 0
        self.deployment_runs: list[str] = []
        # This process submits and asks the database too: the soak's settings only (a
        # STAVE_DATABASE_URL inherited from a caller would send its jobs elsewhere).
        for key in [k for k in os.environ if k.startswith(("STAVE_", "PREFECT_"))]:
            del os.environ[key]
        os.environ.update(self.env)

    # -- the long-lived processes --------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [STAVE, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def prefect_database(self) -> dict[str, str]:
        """Prefect's own PostgreSQL, when asked for: a cluster of those binaries in the home."""
        if self.args.prefect_pg_bin is None:
            return {}
        from stave.infra import embedded_pg
        from stave.infra.db import ensure_database

        embedded_pg.bin_dir = lambda: self.args.prefect_pg_bin  # type: ignore[assignment]
        self.prefect_pg = embedded_pg.EmbeddedPostgres(
            self.home / "prefect-pg", log_file=self.logs / "prefect-pg.log"
        )
        server = self.prefect_pg.ensure_running()
        ensure_database(server.url("postgres"), "prefect")
        return {"STAVE_PREFECT_DATABASE_URL": server.url("prefect")}

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
                if process.poll() is not None:
                    break
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        self.stave("db", "stop", check=False)
        if getattr(self, "prefect_pg", None) is not None:
            self.prefect_pg.stop()

    def stave(self, *argv: str, check: bool = True, api: bool = False) -> str:
        done = subprocess.run(
            [STAVE, *argv], env=self.with_api if api else self.env, capture_output=True,
            text=True, timeout=900,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise SystemExit(f"stave {' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> list[Sample]:
        args = self.args
        self.stave("db", "upgrade")
        self.start("server", ["server"], {**self.env, **self.prefect_database()})
        http = httpx.Client(base_url=self.api, timeout=60)
        _wait(lambda: _healthy(http), 120, "the Prefect server did not start")
        self.stave("pools", "setup", api=True)
        self.stave("deploy", api=True)
        self.start("drain", ["run-pending", "--follow"], self.with_api)
        self.start("worker", ["worker", "--pool", "gpu", "--name", "soak-gpu"], self.with_api)
        self.start("cpu worker", ["worker", "--pool", "cpu", "--name", "soak-cpu"], self.with_api)
        from stave.infra.db import get_engine
        from stave.infra.settings import get_settings

        settings = get_settings()
        engine = get_engine(settings)
        probe = Probe(self.home, self.processes, lambda sql: _sql(engine, sql))
        per_day = -(-args.jobs // args.days)  # at least --jobs in all
        samples: list[Sample] = []
        began = time.monotonic()
        for day in range(1, args.days + 1):
            for n in range(per_day):
                self.submit(day, n, http, engine, settings)
            self.wait_for_the_queue(http, engine)
            self.nightly(day, http)
            probe.age_one_day()
            samples.append(probe.sample(day, self.jobs))
            print(
                f"day {day:>3}: {self.jobs} jobs, {time.monotonic() - began:.0f} s; "
                + samples[-1].headline(),
                flush=True,
            )
        return samples

    def submit(self, day: int, n: int, http: httpx.Client, engine: Any, settings: Any) -> None:
        from stave.tasks.intake.read import rows_from_parameter
        from stave.tasks.submission import submit

        tag = uuid.uuid4().hex[:8]
        rows = [
            {"prompt": f"soft piano in C major, day {day} job {n} take {tag}-{k}", "seed": k}
            for k in range(self.args.clips)
        ]
        self.jobs += 1
        if self.jobs % self.args.deployment_every == 0:
            run = _run_deployment(http, "generate/bulk-generation", {"rows": rows})
            self.deployment_runs.append(run)
            return
        submit(engine, rows_from_parameter(rows), settings, submitted_by="soak")

    def wait_for_the_queue(self, http: httpx.Client, engine: Any, timeout_s: float = 900) -> None:
        """Until every deployment run has ended and nothing is pending or running."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"the {name} exited ({process.returncode}): see {self.logs}")
            self.deployment_runs = [
                run for run in self.deployment_runs if _run_state(http, run) not in ENDED
            ]
            ((open_,),) = _sql(
                engine,
                "SELECT count(*) FROM generation_task WHERE status IN ('pending', 'running')",
            )
            if open_ == 0 and not self.deployment_runs:
                return
            time.sleep(1)
        raise SystemExit(f"the queue did not empty in {timeout_s:.0f} s")

    def nightly(self, day: int, http: httpx.Client) -> None:
        """What the schedules run in a day, through their deployments on the cpu worker: the
        nightly backup (a dump, its drill, a base backup, retention of both and of the WAL),
        the weekly archive; and the operator's daily `stave gc --delete`."""
        runs = [_run_deployment(http, "backup/nightly-backup", {})]
        if day % self.args.week == 0:
            runs.append(
                _run_deployment(
                    http, "archive/weekly-archive", {"older_than_days": self.args.hot_days}
                )
            )
        for run in runs:
            _wait(lambda run=run: _run_state(http, run) in ENDED, 600, f"flow run {run} ended")
            state = _run_state(http, run)
            if state != "COMPLETED":
                raise SystemExit(f"flow run {run} ended {state}: see {self.logs}")
        self.stave("gc", "--delete", "--grace-minutes", "0")


ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _run_state(http: httpx.Client, run: str) -> str:
    return str(_ask(http, "GET", f"/flow_runs/{run}")["state"]["type"])


def _sql(engine: Any, sql: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import text

    with engine.begin() as conn:
        result = conn.execute(text(sql))
        return [tuple(row) for row in result] if result.returns_rows else []


def _run_deployment(http: httpx.Client, name: str, parameters: dict[str, Any]) -> str:
    deployment = _ask(http, "GET", f"/deployments/name/{name}")
    # One idempotency key for every try: a request that did get through makes no second run.
    body = {"parameters": parameters, "idempotency_key": uuid.uuid4().hex}
    made = _ask(http, "POST", f"/deployments/{deployment['id']}/create_flow_run", json=body)
    return str(made["id"])


def _ask(http: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    """A Prefect API call, asked again while the server (SQLite, busy) answers 503 or times
    out, as a client of it would."""
    for _ in range(30):
        try:
            response = http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            continue
        if response.status_code != 503:
            response.raise_for_status()
            return response.json()
        time.sleep(1)
    raise SystemExit(f"the Prefect API kept answering 503 to {method} {url}")


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"{what} within {timeout_s:.0f} s")


def _debian_postgres() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        trgm = Path("/usr/share/postgresql") / candidate.parent.name
        if (candidate / "pg_ctl").is_file() and (trgm / "extension" / "pg_trgm.control").is_file():
            return candidate
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
