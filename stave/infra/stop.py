"""A stop asked of long work by a signal: the first SIGINT or SIGTERM asks loops to stop at
their next safe point (after the batch in flight, or with it handed back); a second stops the
process at once.

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
_installed = False


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
    if _stop.is_set():
        # The second signal: stop now (leases held expire as they would after a crash).
        raise KeyboardInterrupt
    request(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM in this (main) thread: even where the parent started the
    process with SIGINT ignored (a background job of a script)."""
    global _installed
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)
    _installed = True


def reclaim() -> None:
    """Where `install` ran (the CLI), take SIGTERM back for the rest of a flow run: Prefect's
    in-process flow engine puts its own SIGTERM handler in place for each run (it would mark
    the run crashed), and restores this one when the run ends. Elsewhere (a worker's flow run)
    Prefect's handling stays. Main thread only."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
