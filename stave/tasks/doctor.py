"""`stave doctor`: check every configured dependency, one line each with the cause and the fix."""

from __future__ import annotations

import base64
import uuid
from dataclasses import asdict, dataclass
from typing import Literal

from stave.infra import migrate
from stave.infra.db import check_connection, database_url, describe_url, make_engine
from stave.infra.errors import StaveError, first_line
from stave.infra.objectstore import make_object_store
from stave.infra.prefect_env import GPU_POOL
from stave.infra.replica import read_route
from stave.infra.settings import Settings
from stave.tasks.db_status import database_status

# warn: works, but not as the operator likely meant (the exit code stays 0).
Outcome = Literal["ok", "fail", "skip", "warn"]


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def run_checks(settings: Settings) -> list[Check]:
    checks = [_directories(settings)]
    db_checks = _database(settings)
    checks.extend(db_checks)
    checks.append(_object_store(settings))
    if settings.replica_url is not None:
        checks.append(_replica(settings))
    if settings.prefect_api_url:
        auth = settings.prefect_api_auth_string
        headers = _auth_headers(auth.get_secret_value() if auth else None)
        checks.append(_prefect(settings.prefect_api_url, headers))
        if checks[-1].outcome == "ok":
            checks.append(_gpu_limit(settings.prefect_api_url, headers, settings))
    return checks


def _auth_headers(auth_string: str | None) -> dict[str, str]:
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def _gpu_limit(api_url: str, headers: dict[str, str], settings: Settings) -> Check:
    """The `gpu` limit against the gpu pool's online workers: a limit sized from a CPU-only
    host (`stave pools setup` without --gpus) lets the whole fleet make one batch at a time."""
    import httpx

    api = api_url.rstrip("/")
    name = settings.gpu_concurrency_limit
    fix = "stave pools setup --gpus <GPUs in the fleet>"
    try:
        limit = httpx.get(f"{api}/v2/concurrency_limits/{name}", timeout=5.0, headers=headers)
        workers = httpx.post(
            f"{api}/work_pools/{GPU_POOL}/workers/filter",
            json={"workers": {"status": {"any_": ["ONLINE"]}}},
            timeout=5.0,
            headers=headers,
        )
    except httpx.HTTPError as err:
        return Check("gpu-limit", "fail", f"cannot read it: {type(err).__name__}: {err}", fix)
    if limit.status_code == 404 or workers.status_code == 404:
        missing = f"limit {name}" if limit.status_code == 404 else f"work pool {GPU_POOL}"
        return Check("gpu-limit", "warn", f"no {missing} on the server", fix)
    if limit.status_code != 200 or workers.status_code != 200:
        return Check(
            "gpu-limit",
            "fail",
            f"the server answered HTTP {limit.status_code} / {workers.status_code}",
            "check the Prefect server's logs",
        )
    try:
        slots, active = int(limit.json()["limit"]), bool(limit.json().get("active", True))
        online = len(list(workers.json()))
    except (ValueError, KeyError, TypeError):  # a proxy's page, or an API URL without /api
        return Check(
            "gpu-limit",
            "fail",
            f"{api} did not answer as Prefect's API",
            "check STAVE_PREFECT_API_URL (it ends in /api)",
        )
    said = f"{slots} slot(s) of limit {name}, {online} online worker(s) in pool {GPU_POOL}"
    if not active:
        return Check("gpu-limit", "warn", f"{said}; the limit is inactive", fix)
    if slots < online:
        return Check(
            "gpu-limit",
            "warn",
            f"{said}: at most {slots} batch(es) at a time across the fleet",
            fix,
        )
    return Check("gpu-limit", "ok", said)


def _replica(settings: Settings) -> Check:
    route = read_route(settings)
    if route.target == "replica":
        return Check("replica", "ok", "reports, search and gallery read from the replica")
    return Check(
        "replica",
        "fail",
        f"{route.reason}; reads fall back to the primary",
        "start or repair the replica, or raise STAVE_REPLICA_MAX_LAG_S",
    )


def _directories(settings: Settings) -> Check:
    try:
        settings.ensure_dirs()
        for folder in (settings.data_dir, settings.log_dir, settings.tmp_dir):
            probe = folder / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as err:
        return Check(
            "directories",
            "fail",
            f"{err.filename or settings.env_dir} is not writable: {err.strerror}",
            "set STAVE_HOME to a writable folder",
        )
    return Check("directories", "ok", f"data, log and tmp under {settings.env_dir}")


def _database(settings: Settings) -> list[Check]:
    fix = (
        "check STAVE_DATABASE_URL (host, port, credentials) and that the server is running"
        if not settings.uses_embedded_db
        else f"see {settings.log_dir / 'postgres.log'}; `stave db stop` then retry"
    )
    try:
        url = database_url(settings)
        version = check_connection(url, timeout_s=settings.db_connect_timeout_s)
    except StaveError as err:
        skipped = [Check(name, "skip", "database unreachable") for name in ("pgvector", "schema")]
        return [Check("database", "fail", str(err), fix), *skipped]
    where = "embedded" if settings.uses_embedded_db else "external"
    checks = [Check("database", "ok", f"PostgreSQL {version} ({where}) at {describe_url(url)}")]
    engine = make_engine(url, settings, pool_size=1, max_overflow=0)
    try:
        status = database_status(engine)
    except Exception as err:  # reported, not raised: doctor must finish its list
        return [*checks, Check("schema", "fail", first_line(err), "run `stave db upgrade`")]
    finally:
        engine.dispose()
    if status["pgvector_version"]:
        checks.append(Check("pgvector", "ok", f"pgvector {status['pgvector_version']} installed"))
    elif status["pgvector_available"]:
        checks.append(
            Check(
                "pgvector",
                "fail",
                "pgvector is available but not installed in this database",
                "run `stave db upgrade` (creates the extension)",
            )
        )
    else:
        checks.append(
            Check(
                "pgvector",
                "fail",
                "the server has no pgvector extension",
                "install pgvector on the PostgreSQL server",
            )
        )
    head = migrate.head_revision()
    if status["up_to_date"]:
        checks.append(Check("schema", "ok", f"at head revision {head}"))
    else:
        checks.append(
            Check(
                "schema",
                "fail",
                f"at revision {status['revision'] or 'none'}, head is {head}",
                "run `stave db upgrade`",
            )
        )
    return checks


def _object_store(settings: Settings) -> Check:
    store = make_object_store(settings)
    fix = (
        "check STAVE_S3_ENDPOINT, STAVE_S3_ACCESS_KEY, STAVE_S3_SECRET_KEY and STAVE_S3_SECURE"
        if settings.uses_s3
        else "set STAVE_HOME to a writable folder"
    )
    try:
        store.check()
    except StaveError as err:
        return Check("object store", "fail", str(err), fix)
    return Check("object store", "ok", f"{store.describe()} is readable and writable")


def _prefect(api_url: str, headers: dict[str, str]) -> Check:
    import httpx  # lazy: only doctor speaks HTTP itself; off the CLI's start-up path

    url = api_url.rstrip("/") + "/health"
    try:
        response = httpx.get(url, timeout=5.0, headers=headers)
        # /health answers anyone; an API call shows whether the server takes our auth string.
        if response.status_code == 200:
            version = httpx.get(
                api_url.rstrip("/") + "/admin/version", timeout=5.0, headers=headers
            )
            if version.status_code == 401:
                return Check(
                    "prefect",
                    "fail",
                    f"{api_url} refused the request: HTTP 401",
                    "set STAVE_PREFECT_API_AUTH_STRING to the server's auth string",
                )
    except httpx.HTTPError as err:
        return Check(
            "prefect",
            "fail",
            f"cannot reach {url}: {type(err).__name__}: {err}",
            "start the Prefect server or fix STAVE_PREFECT_API_URL",
        )
    if response.status_code != 200:
        return Check(
            "prefect",
            "fail",
            f"{url} answered HTTP {response.status_code}",
            "check the Prefect server's logs",
        )
    return Check("prefect", "ok", f"Prefect API healthy at {api_url}")
