"""The environment Prefect's own commands and clients need, built from Stave's settings.

One place, so a worker, the server, `stave deploy` and the CLI's in-process flows always agree
on the API, its auth string, Prefect's home and its database. No Prefect import here: the
client operations (pools, deployments, health) are in flows/admin.py.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from stave.infra.errors import ConfigError, StaveError, first_line
from stave.infra.settings import Settings, mask_url

# Pools named in prefect.yaml: inference and training on `gpu`, everything else on `cpu`.
GPU_POOL = "gpu"
CPU_POOL = "cpu"
POOLS = (GPU_POOL, CPU_POOL)
# Seconds between a worker flow run's heartbeats (Prefect's minimum is 30).
HEARTBEAT_S = 30


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
    # Links in alerts and artifacts point at the UI operators open.
    env["PREFECT_UI_URL"] = ui_url(settings)
    # Prefect's own retention: its vacuum service deletes flow runs that ended longer ago than
    # STAVE_PREFECT_RETENTION_DAYS (with their task runs, logs and artifacts) and old events.
    env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events,flow_runs"
    env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] = str(
        settings.prefect_retention_days * 86400
    )
    # The `gpu` slots' leases on disk under Prefect's home, not in the server's memory: a
    # server restarted while a batch held a slot otherwise forgets the lease but not the slot,
    # which then never comes back and the whole fleet waits on it. Kept, the lease expires
    # (STAVE_GPU_SLOT_LEASE_S) and Prefect's repossessor frees the slot.
    env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] = (
        "prefect.server.concurrency.lease_storage.filesystem"
    )
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


def worker_name(pool: str, gpu: int | None) -> str:
    host = socket.gethostname().split(".")[0]
    return f"{host}-gpu{gpu}" if gpu is not None else f"{host}-{pool}"


def worker_env(settings: Settings, gpu: int | None) -> dict[str, str]:
    """The worker's environment, inherited by every flow run it starts: pinned to one GPU
    (which that process then sees as cuda:0)."""
    env = client_env(settings, settings.prefect_server_url)
    # Flow runs send a heartbeat, so a run whose host dies is marked Crashed (`stave deploy`'s
    # automation) instead of staying Running.
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_S)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def ui_url(settings: Settings) -> str:
    """Where operators open the Prefect UI: the configured address, else the server's."""
    configured = settings.prefect_ui_url or settings.prefect_server_url.removesuffix("/api")
    return configured.rstrip("/")
