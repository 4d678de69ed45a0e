"""One slot of the global `gpu` concurrency limit around the work that needs the device, and
what a batch does when the Prefect API that keeps the limit is away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from stave.infra.errors import StaveError, first_line

_limits: dict[str, bool] = {}
# Seconds between looks at an API that is away (doubling up to the last), so a long outage
# costs a request a minute, not a stream of them.
API_RETRY_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


class OrchestratorUnavailable(StaveError):
    """The Prefect API (and so the `gpu` limit) cannot be reached: nothing was generated, and
    the batch goes back to the queue with its attempt not counted."""

    error_class = "storage_unavailable"
    retryable = True


def unreachable(err: BaseException) -> bool:
    """Whether `err` (or what caused it) says the API is away: no connection, a timeout, or a
    proxy's 502/503/504 in front of it."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (httpx.TransportError, ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, httpx.HTTPStatusError) and seen.response.status_code in (
            502,
            503,
            504,
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def gpu_slot(name: str, lease_s: float) -> Iterator[None]:  # lease_s: STAVE_GPU_SLOT_LEASE_S
    """One slot of the global concurrency limit `name`, or nothing if no such limit exists.

    Looked up once per process: without `stave pools setup` (the embedded default) inference is
    not throttled, and that is said once, not on every batch.

    The slot is leased for `STAVE_GPU_SLOT_LEASE_S` (60 s, the server's floor; Prefect's
    default is 300 s) and renewed at three quarters of that while the work goes on. A holder
    that is gone frees it within the lease: a dead host, or a grant the client never saw (a
    server too busy to answer in time grants the slot after the client gave up and asked
    again; the soak met one, which kept the fleet waiting for its 600-s lease).

    The API away when the slot is taken: `OrchestratorUnavailable` (the caller hands the batch
    back). Away when it is given back, after the work is done: the work stands, the slot's
    lease runs out on the server, and a warning says so.
    """
    try:
        if name not in _limits:
            with get_client(sync_client=True) as client:
                client.read_global_concurrency_limit_by_name(name)
            _limits[name] = True
    except ObjectNotFound:
        _limits[name] = False
        get_run_logger().info(
            "no global concurrency limit %r: inference is not throttled in this process", name
        )
    except Exception as err:
        if unreachable(err):
            raise _away(err) from None
        raise
    if not _limits[name]:
        yield
        return
    held, done = False, False
    try:
        # A renewal that fails while the device works must not kill the work: the lease then
        # lapses on the server, as a dead host's would.
        with concurrency(
            name,
            occupy=1,
            strict=True,
            lease_duration=max(60.0, lease_s),  # the server's floor
            raise_on_lease_renewal_failure=False,
        ):
            held = True
            yield
            done = True
    except Exception as err:
        if not unreachable(err):
            raise
        if not held:
            raise _away(err) from None
        if not done:
            raise
        get_run_logger().warning(
            "the %r slot could not be given back (%s): its lease runs out on the server",
            name,
            first_line(err),
        )


def _away(err: BaseException) -> OrchestratorUnavailable:
    return OrchestratorUnavailable(
        f"the Prefect API is unreachable, so no `gpu` slot can be taken: {first_line(err)}"
    )


def wait_for_api(stop_requested: Callable[[], bool], log: Any) -> bool:
    """Back off until the Prefect API answers its health check (True), or a stop is requested
    (False). Says how long it has been waiting as it goes."""
    began = time.monotonic()
    for attempt in range(10**9):
        pause = API_RETRY_S[min(attempt, len(API_RETRY_S) - 1)]
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            if stop_requested():
                return False
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
        try:
            with get_client(sync_client=True) as client:
                failure = client.api_healthcheck()
        except Exception as err:  # the client itself could not connect
            failure = err
        if failure is None:
            return True
        log.warning(
            "the Prefect API is still unreachable after %.0f s (%s); looking again in %g s",
            time.monotonic() - began,
            first_line(failure),
            API_RETRY_S[min(attempt + 1, len(API_RETRY_S) - 1)],
        )
    return False
