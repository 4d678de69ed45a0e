"""One slot of the global `gpu` concurrency limit around the work that needs the device."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

_limits: dict[str, bool] = {}


def gpu_slot(name: str) -> AbstractContextManager[None]:
    """One slot of the global concurrency limit `name`, or nothing if no such limit exists.

    Looked up once per process: without `stave pools setup` (the embedded default) inference is
    not throttled, and that is said once, not on every batch.
    """
    if name not in _limits:
        try:
            with get_client(sync_client=True) as client:
                client.read_global_concurrency_limit_by_name(name)
            _limits[name] = True
        except ObjectNotFound:
            _limits[name] = False
            get_run_logger().info(
                "no global concurrency limit %r: inference is not throttled in this process", name
            )
    return concurrency(name, occupy=1, strict=True) if _limits[name] else nullcontext()
