"""Prefect's side of operations through its client: work pools, the gpu limit, deployments.

Stave does not re-implement any of it: pool setup is made idempotent, the API's health is
reported in one line, and deployments are listed for `stave deploy`'s report. The environment
these clients use comes from infra/prefect_env.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.exceptions import ObjectNotFound

from stave.infra.errors import ConfigError, StaveError, first_line
from stave.infra.filelock import file_lock
from stave.infra.prefect_env import GPU_POOL, POOLS

# Shipped inside the package: `stave deploy` works from an installed wheel, in any folder.
DEPLOYMENTS_FILE = Path(__file__).resolve().parent.parent / "prefect.yaml"


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
    import torch  # seconds to import: only when GPUs are counted

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def setup_pools(limit_name: str, gpus: int | None) -> PoolSetup:
    """Create the `gpu` and `cpu` process pools and the global limit `limit_name`, each only
    if missing. `gpus` sizes the limit (one slot per GPU; at least one, so a CPU-only host
    still runs inference one batch at a time); None keeps an existing limit as it is."""
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
                    else "backups and archival (stave worker --pool cpu)"
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


def ensure_local_database(prefect_home: Path) -> None:
    """Prefect's temporary API (no STAVE_PREFECT_API_URL) keeps its SQLite database in
    Prefect's home, and each process starts its own server on it. Commands started together in
    a fresh home would each create it: the losers print SQLite's "database is locked" traces.
    The first creates it here, under a lock; the others wait, then find it made."""
    ready = prefect_home / "prefect.db.ready"
    if ready.exists():
        return
    with file_lock(prefect_home / "prefect.db.lock"):
        if ready.exists():
            return
        from prefect.server.database import provide_database_interface
        from prefect.utilities.asyncutils import run_coro_as_sync

        # Its migrations to head: a creation cut short is finished, not redone.
        run_coro_as_sync(provide_database_interface().create_db())
        ready.touch()


def check_api(api_url: str) -> None:
    """One line when the Prefect API is not answering (or refuses our auth string)."""
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise StaveError(
            f"the Prefect API at {api_url} is not answering ({first_line(failure)}); start it with "
            "`stave server` or set STAVE_PREFECT_API_URL"
        )


def list_deployments() -> list[dict[str, Any]]:
    """Stave's deployments (a shared server holds others' too) with their pools and
    schedules, for `stave deploy`'s report and its alerts."""
    with get_client(sync_client=True) as client:
        deployments = [
            d for d in client.read_deployments() if (d.entrypoint or "").startswith("stave.flows.")
        ]
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
                "id": str(d.id),
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


def require_pool(name: str) -> None:
    """One line when a work pool is missing (a worker would otherwise wait on nothing)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            raise ConfigError(f"work pool {name} does not exist: run `stave pools setup`") from None
