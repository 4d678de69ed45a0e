"""One slot of the global `gpu` concurrency limit around the work that needs the device."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

_limits: dict[str, bool] = {}


def gpu_slot(name: str, lease_s: float) -> AbstractContextManager[None]:
    """One slot of the global concurrency limit `name`, or nothing if no such limit exists.

    Looked up once per process: without `stave pools setup` (the embedded default) inference is
    not throttled, and that is said once, not on every batch.

    The slot is leased like the tasks it generates (`STAVE_LEASE_S`, at least 60 s: the
    server's floor, which also lets renewals ride out a Prefect server restart; Prefect's
    default is 300 s): a GPU host that dies holding it frees it about with its tasks, not
    five minutes later.
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
    if not _limits[name]:
        return nullcontext()
    return concurrency(name, occupy=1, strict=True, lease_duration=max(60.0, lease_s))
