"""`stave server | pools setup | worker | deploy | run | prompts upload`: Stave on Prefect.

Each command is a thin layer over Prefect's own: the value is in one environment built from
Stave's settings (API URL, auth string, Prefect's home and database) and one-line errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from uuid import UUID

import typer
from tqdm import tqdm

from stave.cli.common import (
    JSON_HELP,
    FileFormat,
    engine,
    print_json,
    print_rejections,
    settings,
)
from stave.infra import prefect_env, supervise
from stave.infra.errors import ConfigError, StaveError
from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.tasks.intake import upload_prompts


class Pool(StrEnum):
    gpu = prefect_env.GPU_POOL
    cpu = prefect_env.CPU_POOL


pools_app = typer.Typer(help="Prefect work pools and the gpu concurrency limit.")
prompts_app = typer.Typer(help="Prompt files in the object store, for the UI's bulk generation.")


def _exec(args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    """Become Prefect's command: signals (Ctrl-C, a supervisor's SIGTERM) reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    if cwd is not None:
        os.chdir(cwd)
    os.execvpe(args[0], args, {**os.environ, **env})


def server() -> None:
    """Start the Prefect server (API and UI) for this environment.

    SQLite under <home>/<env>/data/prefect unless STAVE_PREFECT_DATABASE_URL names a
    PostgreSQL; STAVE_PREFECT_API_AUTH_STRING, when set, is required of every client.
    """
    current = settings()
    prefect_env.check_server_database(current)
    current.prefect_home.mkdir(parents=True, exist_ok=True)
    env = prefect_env.server_env(current)
    typer.echo(
        f"Prefect server for {current.env}: API {current.prefect_server_url} "
        f"(database: {'PostgreSQL' if current.prefect_database_url else 'SQLite'})",
        err=True,
    )
    _exec(
        [
            prefect_env.prefect_executable(),
            "server",
            "start",
            "--host",
            current.prefect_server_host,
            "--port",
            str(current.prefect_server_port),
        ],
        env,
    )


def _connect(current: Settings) -> str:
    """Point this process's Prefect client at the server; fail in one line if it is down."""
    api = current.prefect_server_url
    # Before Prefect is imported: it reads its settings from the environment once.
    prefect_env.apply_client_env(current, api, override=True)
    from stave.flows import admin  # prefect

    admin.check_api(api)
    return api


@pools_app.command("setup")
def pools_setup(
    gpus: int | None = typer.Option(
        None,
        "--gpus",
        min=0,
        help="GPUs to size the gpu limit for (default: those on this host, at least 1).",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create the gpu and cpu work pools and the gpu concurrency limit (idempotent)."""
    current = settings()
    api = _connect(current)
    from stave.flows import admin  # prefect

    result = admin.setup_pools(current.gpu_concurrency_limit, gpus)
    if as_json:
        print_json(result.as_dict())
        return
    for name in result.created_pools:
        typer.echo(f"created work pool {name} (process)")
    for name in result.existing_pools:
        typer.echo(f"work pool {name} already exists")
    typer.echo(
        f"concurrency limit {result.limit_name}: {result.limit} slot(s) ({result.limit_action})"
    )
    typer.echo(f"Prefect API: {api}")


def worker(
    gpu: int | None = typer.Option(
        None, "--gpu", min=0, help="Pin to this GPU (CUDA_VISIBLE_DEVICES) in the gpu pool."
    ),
    pool: Pool | None = typer.Option(None, "--pool", help="Default: gpu with --gpu, else cpu."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Flow runs at once (default: 1 on gpu, 4 on cpu)."
    ),
    name: str | None = typer.Option(None, "--name", help="Worker name (default: host-gpuN)."),
    grace: float = typer.Option(
        90.0, "--grace", min=1, help="On SIGTERM, seconds its flow runs get to stop first."
    ),
) -> None:
    """Start a Prefect process worker; with --gpu N it serves the gpu pool on that GPU only.

    SIGTERM stops its flow runs first (drains hand their batch back), then the worker."""
    chosen = (pool or (Pool.gpu if gpu is not None else Pool.cpu)).value
    if gpu is not None and chosen != prefect_env.GPU_POOL:
        raise ConfigError("--gpu pins a worker of the gpu pool; drop --pool cpu or --gpu")
    current = settings()
    _connect(current)
    from stave.flows import admin  # prefect

    admin.require_pool(chosen)
    # Every flow run this worker starts needs the schema: check it once, here, in one line.
    engine(current)
    runs = limit or (1 if chosen == prefect_env.GPU_POOL else 4)
    worker_name = name or prefect_env.worker_name(chosen, gpu)
    pinned = f", CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""
    typer.echo(f"worker {worker_name}: pool {chosen}, {runs} run(s) at once{pinned}", err=True)
    code = supervise.run(
        [
            prefect_env.prefect_executable(),
            "worker",
            "start",
            "--pool",
            chosen,
            "--type",
            "process",
            "--name",
            worker_name,
            "--limit",
            str(runs),
            "--no-create-pool-if-not-found",
        ],
        {**os.environ, **prefect_env.worker_env(current, gpu)},
        # Entrypoints are modules of the installed package: the folder does not matter, so the
        # worker runs in its own scratch folder rather than wherever it was started.
        cwd=_scratch(current, "worker"),
        grace_s=grace,
        say=lambda line: typer.echo(f"worker {worker_name}: {line}", err=True),
    )
    if code:
        raise typer.Exit(code)


def _scratch(current: Settings, name: str) -> Path:
    folder = current.tmp_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def deploy(
    name: list[str] = typer.Option(
        [], "--name", "-n", help="Only these deployments (default: all in prefect.yaml)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Apply prefect.yaml: create or update every deployment and its schedule."""
    current = settings()
    _connect(current)
    from stave.flows import admin  # prefect

    admin.setup_pools(current.gpu_concurrency_limit, None)
    selection = [arg for n in name for arg in ("--name", n)] or ["--all"]
    # _connect put the client's variables in this environment; prefect.yaml's schedules
    # read the timezone from it.
    env = {**os.environ, "STAVE_TIMEZONE": current.timezone}
    done = subprocess.run(
        [
            prefect_env.prefect_executable(),
            "deploy",
            "--prefect-file",
            str(admin.DEPLOYMENTS_FILE),
            *selection,
            "--no-prompt",
        ],
        cwd=_scratch(current, "deploy"),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
        raise StaveError(f"prefect deploy failed: {lines[-1] if lines else done.returncode}")
    deployed = admin.list_deployments()
    from stave.flows.alerts import apply_alerts  # prefect

    alerts = apply_alerts(current, {f"{d['flow']}/{d['name']}": UUID(d["id"]) for d in deployed})
    if as_json:
        print_json({"deployments": deployed, "alerts": alerts.as_dict()})
        return
    for row in deployed:
        deployment = f"{row['flow']}/{row['name']}"
        typer.echo(f"{deployment:<42} pool {row['pool']:<4} {row['schedule'] or 'manual'}")
    if not alerts.webhook:
        typer.echo("alerts: off (set STAVE_ALERT_WEBHOOK_URL and deploy again)")
    for automation, action in alerts.automations.items():
        typer.echo(f"alert {automation!r} {action}")


@prompts_app.command("upload")
def prompts_upload(
    file: Path = typer.Argument(..., help="Prompt file: .csv, .jsonl or .parquet."),
    fmt: FileFormat | None = typer.Option(None, "--format", help="The file's format."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check a prompt file and put it in the object store; print the key to give the
    bulk-generation deployment as file_key."""
    current = settings()
    made = upload_prompts(
        make_object_store(current), file, fmt.value if fmt else None, env_name=current.env
    )
    print_rejections([r.to_dict() for r in made.rejected], as_json, made.rejected_count)
    if as_json:
        print_json(made.to_dict())
    else:
        typer.echo(made.file_key)


def run(
    deployment: str = typer.Argument(..., help="flow/deployment, e.g. backup/nightly-backup."),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="key=value, typed by the deployment's schema (repeat)."
    ),
    watch: bool = typer.Option(False, "--watch", help="Follow the run to its end."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Trigger a deployment on the Prefect server (STAVE_PREFECT_API_URL and its auth), its
    parameters checked against the deployment's schema first; --watch follows the run's
    state and progress and exits 1 unless it completes."""
    current = settings()
    _connect(current)
    from stave.flows import trigger  # prefect

    made = trigger.trigger(deployment, param)
    report: dict[str, object] = {
        "flow_run_id": str(made.flow_run_id),
        "flow_run_name": made.flow_run_name,
        "deployment": made.deployment,
        "parameters": made.parameters,
    }
    if not as_json:
        typer.echo(f"flow run {made.flow_run_name} ({made.flow_run_id}) of {deployment} created")
    if not watch:
        if as_json:
            print_json(report)
        return
    with tqdm(total=100, unit="%", desc=made.flow_run_name, leave=False, disable=as_json) as bar:

        def show(now: trigger.Followed) -> None:
            bar.set_postfix_str(now.state)
            if now.progress is not None:
                bar.update(now.progress - bar.n)

        final = trigger.follow(made.flow_run_id, show)
    report.update(state=final.state, message=final.message)
    if as_json:
        print_json(report)
    elif final.completed:
        typer.echo(f"flow run {made.flow_run_name}: {final.state}")
    if not final.completed:
        raise StaveError(
            f"flow run {made.flow_run_name} ended {final.state}: {final.message or 'no message'}"
        )
