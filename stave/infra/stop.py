"""A stop asked of long work by a signal: the first SIGINT or SIGTERM asks loops to stop at
their next safe point (after the batch in flight, or with it handed back); a second Ctrl-C
stops the process at once. SIGTERM never escalates: under systemd one stop sends it to every
process of the service (and Prefect's worker forwards its own to its flow runs), so a second
SIGTERM is the same request again; a supervisor's escalation is SIGKILL, after its timeout.

Long loops (generation drains, backfills) call `requested()` between units of work and
`check()` where they can give work back. Nothing here knows Prefect or the database: the CLI
installs the handlers, the loops read the flag.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from stave.infra.errors import StaveError

_stop = threading.Event()
_signal: int | None = None


class StopRequested(StaveError):
    """A signal asked the work to stop; what was in flight was finished or handed back."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def requested() -> bool:
    return _stop.is_set()


def signal_number() -> int | None:
    """The signal that asked for the stop (None when none did)."""
    return _signal


def wait(seconds: float) -> bool:
    """Sleep up to `seconds`, waking at once if a stop is asked; whether one was."""
    return _stop.wait(seconds)


def check() -> None:
    """Raise StopRequested if a stop was asked: for a loop's safe points."""
    if _stop.is_set() and _signal is not None:
        raise StopRequested(_signal)


def request(signum: int) -> None:
    """Ask for a stop as if `signum` had arrived (tests and embedding callers)."""
    global _signal
    _signal = signum
    _stop.set()


def reset() -> None:
    global _signal
    _signal = None
    _stop.clear()


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _stop.is_set() and signum == signal.SIGINT:
        # A second Ctrl-C: stop now (leases held expire as they would after a crash).
        raise KeyboardInterrupt
    if not _stop.is_set():
        request(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM in this (main) thread: even where the parent started the
    process with SIGINT ignored (a background job of a script)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)


def reclaim() -> None:
    """Take SIGTERM for the rest of a flow run, so a stop hands work back instead of killing
    it: Prefect's flow engine puts its own SIGTERM handler in place for each run (it would
    mark the run crashed with its claims held until their leases expire) and restores the
    previous one when the run ends. In a worker's flow run this is what a rolling restart
    (systemd, Kubernetes) sends. Main thread only; a no-op elsewhere."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
