"""`stave server | pools setup | worker | deploy | prompts upload`: running Stave on Prefect.

Each command is a thin layer over Prefect's own: the value is in one environment built from
Stave's settings (API URL, auth string, Prefect's home and database) and one-line errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from infra.cli.common import print_json, settings
from infra.errors import ConfigError, InvalidInput, StaveError
from infra.settings import Settings

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
    from infra import prefect_admin

    current = settings()
    prefect_admin.check_server_database(current)
    current.prefect_home.mkdir(parents=True, exist_ok=True)
    env = prefect_admin.server_env(current)
    typer.echo(
        f"Prefect server for {current.env}: API {current.prefect_server_url} "
        f"(database: {'PostgreSQL' if current.prefect_database_url else 'SQLite'})",
        err=True,
    )
    _exec(
        [
            prefect_admin.prefect_executable(),
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
    from infra import prefect_admin

    api = current.prefect_server_url
    prefect_admin.apply_client_env(current, api, override=True)
    prefect_admin.check_api(api)
    return api


@pools_app.command("setup")
def pools_setup(
    gpus: int | None = typer.Option(
        None,
        "--gpus",
        min=0,
        help="GPUs to size the gpu limit for (default: those on this host, at least 1).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create the gpu and cpu work pools and the gpu concurrency limit (idempotent)."""
    from infra import prefect_admin

    current = settings()
    api = _connect(current)
    result = prefect_admin.setup_pools(current.gpu_concurrency_limit, gpus)
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
    pool: str | None = typer.Option(
        None, "--pool", help="gpu or cpu (default: gpu with --gpu, else cpu)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Flow runs at once (default: 1 on gpu, 4 on cpu)."
    ),
    name: str | None = typer.Option(None, "--name", help="Worker name (default: host-gpuN)."),
) -> None:
    """Start a Prefect process worker; with --gpu N it serves the gpu pool on that GPU only."""
    from infra import prefect_admin

    chosen = pool or (prefect_admin.GPU_POOL if gpu is not None else prefect_admin.CPU_POOL)
    if chosen not in prefect_admin.POOLS:
        raise ConfigError(f"--pool {chosen}: expected one of {', '.join(prefect_admin.POOLS)}")
    if gpu is not None and chosen != prefect_admin.GPU_POOL:
        raise ConfigError("--gpu pins a worker of the gpu pool; drop --pool cpu or --gpu")
    current = settings()
    _connect(current)
    _require_pool(chosen)
    # Every flow run this worker starts needs the schema: check it once, here, in one line.
    from infra import migrate
    from infra.db import database_url

    migrate.ensure_at_head(database_url(current), embedded=current.uses_embedded_db)
    runs = limit or (1 if chosen == prefect_admin.GPU_POOL else 4)
    worker_name = name or prefect_admin.worker_name(chosen, gpu)
    pinned = f", CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""
    typer.echo(f"worker {worker_name}: pool {chosen}, {runs} run(s) at once{pinned}", err=True)
    _exec(
        [
            prefect_admin.prefect_executable(),
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
        prefect_admin.worker_env(current, gpu),
        # Flow runs start in the project folder, where prefect.yaml's entrypoints resolve.
        cwd=prefect_admin.project_root(),
    )


def _require_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            raise ConfigError(f"work pool {name} does not exist: run `stave pools setup`") from None


def deploy(
    name: list[str] = typer.Option(
        [], "--name", "-n", help="Only these deployments (default: all in prefect.yaml)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Apply prefect.yaml: create or update every deployment and its schedule."""
    from infra import prefect_admin

    current = settings()
    _connect(current)
    prefect_admin.setup_pools(current.gpu_concurrency_limit, None)
    root = prefect_admin.project_root()
    selection = [arg for n in name for arg in ("--name", n)] or ["--all"]
    # _connect put the client's variables in this environment; prefect.yaml's schedules
    # read the timezone from it.
    env = {**os.environ, "STAVE_TIMEZONE": current.timezone}
    done = subprocess.run(
        [prefect_admin.prefect_executable(), "deploy", *selection, "--no-prompt"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
        raise StaveError(f"prefect deploy failed: {lines[-1] if lines else done.returncode}")
    deployed = prefect_admin.list_deployments()
    if as_json:
        print_json(deployed)
        return
    for row in deployed:
        deployment = f"{row['flow']}/{row['name']}"
        typer.echo(f"{deployment:<42} pool {row['pool']:<4} {row['schedule'] or 'manual'}")


@prompts_app.command("upload")
def prompts_upload(
    file: Path = typer.Argument(..., help="Prompt file: .csv, .jsonl or .parquet."),
    fmt: str | None = typer.Option(None, "--format", help="csv, jsonl or parquet."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check a prompt file and put it in the object store; print the key to give the
    bulk-generation deployment as file_key."""
    from infra.cli.jobs import _print_rejections
    from infra.objectstore import make_object_store
    from tasks.intake import check_rows, read_file

    current = settings()
    # The checks a submission makes on each row's own values, before anything is stored: an
    # operator learns about a bad row now, not from a failed run later.
    source = read_file(file, fmt)
    checked, rejected = check_rows(source)
    if not checked:
        first = f" (first: {rejected[0]})" if rejected else ""
        raise InvalidInput(f"{file}: no row would be accepted{first}; nothing uploaded")
    key = f"prompts/{source.sha256}.{source.fmt}"
    store = make_object_store(current)
    with open(file, "rb") as handle:
        stored = store.put_stream(key, handle)
    rejections = [r.to_dict() for r in rejected]
    _print_rejections(rejections, as_json)
    result = {
        "file_key": key,
        "bytes": stored.size,
        "rows": len(checked),
        "rejected": len(rejected),
        "rejections": rejections,
    }
    if as_json:
        print_json(result)
    else:
        typer.echo(key)
