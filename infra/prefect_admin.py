"""Prefect's side of operations: the server, work pools, workers and deployments.

Stave does not re-implement any of it. These helpers build the environment Prefect's own
commands need from Stave's settings (one place, so a worker, the server and `stave deploy`
always agree on the API, its auth string and Prefect's home), and make pool setup idempotent.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from infra.errors import ConfigError, StaveError, first_line
from infra.settings import Settings, mask_url

# Pools named in prefect.yaml: inference and training on `gpu`, everything else on `cpu`.
GPU_POOL = "gpu"
CPU_POOL = "cpu"
POOLS = (GPU_POOL, CPU_POOL)


def client_env(settings: Settings, api_url: str | None) -> dict[str, str]:
    """Variables for any Prefect client Stave starts (a CLI command, a worker, `prefect
    deploy`). `api_url` None: Prefect's ephemeral API under Stave's data folder."""
    env = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if settings.prefect_api_auth_string is not None:
        env["PREFECT_API_AUTH_STRING"] = settings.prefect_api_auth_string.get_secret_value()
    return env


def apply_client_env(settings: Settings, api_url: str | None, *, override: bool = False) -> None:
    """Set `client_env` in this process; what the caller exported wins unless `override`."""
    # Prefect creates its home without parents: with an external database nothing else has
    # made <home>/<env>/data yet, and the ephemeral API then never starts.
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    for key, value in client_env(settings, api_url).items():
        if override:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


def server_env(settings: Settings) -> dict[str, str]:
    """`client_env` plus the server's own: its database, host, port and auth string."""
    env = client_env(settings, settings.prefect_server_url)
    env["PREFECT_SERVER_API_HOST"] = settings.prefect_server_host
    env["PREFECT_SERVER_API_PORT"] = str(settings.prefect_server_port)
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = server_database_url(settings)
    if settings.prefect_api_auth_string is not None:
        env["PREFECT_SERVER_API_AUTH_STRING"] = settings.prefect_api_auth_string.get_secret_value()
    return env


def server_database_url(settings: Settings) -> str:
    """SQLite beside Stave's data by default; a PostgreSQL URL through asyncpg otherwise."""
    if settings.prefect_database_url is None:
        return f"sqlite+aiosqlite:///{settings.prefect_home / 'prefect.db'}"
    url = settings.prefect_database_url.get_secret_value()
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise ConfigError(
            f"STAVE_PREFECT_DATABASE_URL {mask_url(url)}: expected a postgresql:// URL "
            "(leave it unset for SQLite)"
        )
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def check_server_database(settings: Settings) -> None:
    """Refuse a PostgreSQL that cannot hold Prefect's schema before the server half-migrates
    it: Prefect's migrations create the pg_trgm extension."""
    if settings.prefect_database_url is None:
        return
    import psycopg

    url = settings.prefect_database_url.get_secret_value()
    plain = urlunsplit(urlsplit(url)._replace(scheme="postgresql"))
    try:
        with psycopg.connect(plain, connect_timeout=settings.db_connect_timeout_s) as conn:
            row = conn.execute(
                "SELECT installed_version IS NOT NULL FROM pg_available_extensions "
                "WHERE name = 'pg_trgm'"
            ).fetchone()
    except psycopg.OperationalError as err:
        raise StaveError(
            f"Prefect database {mask_url(url)} is unreachable: {first_line(err)}"
        ) from None
    if row is None:
        raise StaveError(
            f"Prefect database {mask_url(url)} lacks the pg_trgm extension Prefect's migrations "
            "need (pgserver does not ship it): use a full PostgreSQL, or unset "
            "STAVE_PREFECT_DATABASE_URL for SQLite"
        )


def prefect_executable() -> str:
    """Prefect's CLI from the same environment as this interpreter."""
    candidate = Path(sys.executable).parent / "prefect"
    return str(candidate) if candidate.exists() else "prefect"


def project_root() -> Path:
    """The folder holding prefect.yaml and the flows (a source checkout, installed editable)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "prefect.yaml").is_file():
        raise ConfigError(
            f"no prefect.yaml in {root}: deploy from a source checkout (pip install -e .)"
        )
    return root


# -- pools and the gpu limit ---------------------------------------------------------------------
@dataclass
class PoolSetup:
    created_pools: list[str]
    existing_pools: list[str]
    limit_name: str
    limit: int
    limit_action: str  # created | updated | unchanged

    def as_dict(self) -> dict[str, Any]:
        return {
            "created_pools": self.created_pools,
            "existing_pools": self.existing_pools,
            "concurrency_limit": {
                "name": self.limit_name,
                "limit": self.limit,
                "action": self.limit_action,
            },
        }


def detected_gpus() -> int:
    """GPUs on this host (torch's count, 0 on a CPU-only machine)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def setup_pools(limit_name: str, gpus: int | None) -> PoolSetup:
    """Create the `gpu` and `cpu` process pools and the global limit `limit_name`, each only
    if missing. `gpus` sizes the limit (one slot per GPU; at least one, so a CPU-only host
    still runs inference one batch at a time); None keeps an existing limit as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
        WorkPoolCreate,
    )
    from prefect.exceptions import ObjectNotFound

    created: list[str] = []
    existing: list[str] = []
    with get_client(sync_client=True) as client:
        for name in POOLS:
            try:
                client.read_work_pool(name)
                existing.append(name)
            except ObjectNotFound:
                description = (
                    "inference and training: one worker per GPU (stave worker --gpu N)"
                    if name == GPU_POOL
                    else "backups, archival, housekeeping (stave worker --pool cpu)"
                )
                client.create_work_pool(
                    WorkPoolCreate(name=name, type="process", description=description)
                )
                created.append(name)
        wanted = max(1, gpus if gpus is not None else detected_gpus())
        try:
            current = client.read_global_concurrency_limit_by_name(limit_name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=limit_name, limit=wanted)
            )
            return PoolSetup(created, existing, limit_name, wanted, "created")
        if gpus is None or current.limit == wanted:
            return PoolSetup(created, existing, limit_name, current.limit, "unchanged")
        client.update_global_concurrency_limit(
            limit_name, GlobalConcurrencyLimitUpdate(limit=wanted)
        )
        return PoolSetup(created, existing, limit_name, wanted, "updated")


def check_api(api_url: str) -> None:
    """One line when the Prefect API is not answering (or refuses our auth string)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise StaveError(
            f"the Prefect API at {api_url} is not answering ({first_line(failure)}); start it with "
            "`stave server` or set STAVE_PREFECT_API_URL"
        )


def worker_name(pool: str, gpu: int | None) -> str:
    host = socket.gethostname().split(".")[0]
    return f"{host}-gpu{gpu}" if gpu is not None else f"{host}-{pool}"


def worker_env(settings: Settings, gpu: int | None) -> dict[str, str]:
    """The worker's environment, inherited by every flow run it starts: pinned to one GPU
    (which that process then sees as cuda:0)."""
    env = client_env(settings, settings.prefect_server_url)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def list_deployments() -> list[dict[str, Any]]:
    """Every deployment with its pool and schedules, for `stave deploy`'s report."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    rows = []
    for d in sorted(deployments, key=lambda d: (flows.get(d.flow_id, ""), d.name)):
        schedules = [_describe(s.schedule) for s in d.schedules if s.active]
        rows.append(
            {
                "flow": flows.get(d.flow_id, str(d.flow_id)),
                "name": d.name,
                "pool": d.work_pool_name,
                "schedule": "; ".join(schedules),
                "entrypoint": d.entrypoint,
            }
        )
    return rows


def _describe(schedule: Any) -> str:
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron} {schedule.timezone or 'UTC'}"
    interval = getattr(schedule, "interval", None)
    if interval is not None:
        return f"every {int(interval.total_seconds())} s"
    return str(schedule)
