"""A worker that stops gracefully: Prefect's process worker run as a child of `stave worker`.

Prefect 3's process worker, stopped, kills its flow runs at once (it terminates each, then
kills it when its own shutdown cancels the wait), so a rolling restart would crash every
running flow run with its claims held until their leases expire. `stave worker` therefore
stays the main process and runs the Prefect worker as its child; on SIGTERM (what systemd with
`KillMode=mixed` and Kubernetes send to the main process) it:

1. pauses the Prefect worker (SIGSTOP), so it starts no new flow run;
2. sends SIGTERM to each of its flow runs: Stave's drains hand their batch back and end
   Cancelled; other flows end as Prefect ends them;
3. waits for them to exit (up to `grace_s`), then resumes the worker with SIGINT pending, so
   it reports what ended and exits.

Ctrl-C at a terminal reaches every process of the foreground group itself, so SIGINT here is
left to the Prefect worker's own handling. Linux only (flow runs are found in /proc).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
            if int(parent) == pid and state != "Z":
                found.append(int(stat.parent.name))
    return found


def run(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    grace_s: float,
    say: Callable[[str], None],
) -> int:
    """Run `argv` (Prefect's worker) until it exits; its exit code. SIGTERM stops its flow runs
    first, as above."""
    child = subprocess.Popen(argv, env=env, cwd=cwd)
    asked = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        asked.set()

    def on_int(_signum: int, _frame: FrameType | None) -> None:
        pass  # the terminal sent it to the worker and its flow runs too

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    while child.poll() is None:
        if asked.wait(0.2):
            _stop_gracefully(child, grace_s, say)
            break
    return child.wait()


def _stop_gracefully(
    child: subprocess.Popen[bytes], grace_s: float, say: Callable[[str], None]
) -> None:
    os.kill(child.pid, signal.SIGSTOP)
    runs = children(child.pid)
    say(f"SIGTERM: stopping {len(runs)} flow run(s) before the worker (up to {grace_s:g} s)")
    for pid in runs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while children(child.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = children(child.pid)
    if left:
        say(f"{len(left)} flow run(s) still running after {grace_s:g} s: the worker stops them")
    # Resume with SIGINT pending: Prefect's worker records its ended runs and exits.
    os.kill(child.pid, signal.SIGINT)
    os.kill(child.pid, signal.SIGCONT)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
