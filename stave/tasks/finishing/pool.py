"""The finishing processes beside the model's process, and the batches in flight to them.

One pool per process, started on first use and kept (a warm drain or a worker's flow run
serves many batches): `processes` finishers (`worker.py`), each fed through a pipe of its
own, one request at a time, so the pool always knows which finisher holds which batch. The
model's process never waits on a finisher except for room: at most `in_flight` batches are
handed over and not yet answered (the rest wait here, revocable), each in a shared-memory
segment that is reused once its batch is answered. No thread of the model's process runs
for the pool: it is read when the drain asks, between batches (`poll`, `wait_for_room`).

A finisher that dies answers for its batch as an `internal` failure with `died` set (the
drain then gives the batch back to the queue and removes its objects) and is replaced.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from stave.infra import stop
from stave.infra.errors import StaveError
from stave.infra.settings import Settings
from stave.tasks.finishing.handoff import BatchResult, Handoff, PagesRequest

Request = Handoff | PagesRequest
_log = logging.getLogger("stave.finishing")
# Finishers that die before they are ready, in a row, before the pool gives up (a broken
# installation would otherwise be restarted for ever).
START_FAILURES = 3


class FinishersUnavailable(StaveError):
    """The finishing processes cannot start: the model's process cannot hand a batch over."""


@dataclass
class Finished:
    request: Request
    answer: Any  # BatchResult for a Handoff, the pages' dict for a PagesRequest


class _Finisher:
    def __init__(self, nice: int) -> None:
        parent, child = Pipe()
        # A process of its own (not multiprocessing's spawn, which re-imports the parent's
        # main module: Prefect's engine in a worker's flow run), seen in `ps` as what it is.
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stave.tasks.finishing.worker",
                str(child.fileno()),
                str(nice),
            ],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
        )
        child.close()  # the child's end lives in the child only: its exit is our EOF
        self.conn: Connection = parent
        self.ready = False
        self.holding: Request | None = None

    def how_it_ended(self) -> str:
        code = self.process.poll()
        if code is None:
            return "closed its pipe"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


class FinisherPool:
    def __init__(self, processes: int, in_flight: int, nice: int) -> None:
        self.processes = processes
        self.limit = max(in_flight, 1)
        self.nice = nice
        self._finishers: list[_Finisher] = []
        self._backlog: deque[Request] = deque()
        self._segments: dict[str, SharedMemory] = {}  # in use, by name
        self._free: list[SharedMemory] = []
        self._start_failures = 0
        self._lock = threading.RLock()
        self.closed = False
        self._exiting = False  # closing at the interpreter's exit: logging may be gone

    # -- the model's process hands batches over ------------------------------------------------
    def start(self) -> None:
        with self._lock:
            while len(self._finishers) < self.processes:
                self._finishers.append(_Finisher(self.nice))

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every finisher has started (imports done), or `timeout`: a warm
        drain or a benchmark starts its clock with finishers that are ready."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self.start()
            while not all(f.ready for f in self._finishers) and time.monotonic() < deadline:
                waiting = [f.conn for f in self._finishers if not f.ready]
                for conn in wait(waiting, max(0.0, deadline - time.monotonic())):
                    finisher = next(f for f in self._finishers if f.conn is conn)
                    self._read(finisher)
                self._dispatch()

    @property
    def in_flight(self) -> int:
        """Batches handed over and not yet answered (waiting here or with a finisher)."""
        waiting = sum(isinstance(r, Handoff) for r in self._backlog)
        return waiting + sum(isinstance(f.holding, Handoff) for f in self._finishers)

    @property
    def pending(self) -> int:
        """Requests of any kind (batches, pages) not yet answered."""
        return len(self._backlog) + sum(f.holding is not None for f in self._finishers)

    def holders(self) -> list[int]:
        """The process ids of the finishers holding a request now (lock-free: for a watcher
        on another thread while the drain waits in `poll`)."""
        return [f.process.pid for f in list(self._finishers) if f.holding is not None]

    def segment(self, size: int) -> SharedMemory:
        """Shared memory of at least `size` bytes for the next batch: a free one that fits is
        reused (its pages are already mapped); at most `in_flight` exist at once."""
        with self._lock:
            fits = [s for s in self._free if s.size >= size]
            if fits:
                chosen = min(fits, key=lambda s: s.size)
                self._free.remove(chosen)
            else:
                while self._free and len(self._free) + len(self._segments) >= self.limit:
                    _unlink(self._free.pop())
                chosen = SharedMemory(create=True, size=max(size, 1))
            self._segments[chosen.name] = chosen
            return chosen

    def release(self, name: str) -> None:
        """The segment's batch is done with (answered, or never handed over)."""
        with self._lock:
            segment = self._segments.pop(name, None)
            if segment is not None:
                self._free.append(segment)

    def submit(self, request: Request) -> None:
        with self._lock:
            if self.closed:
                raise FinishersUnavailable("the finishing processes were stopped")
            self.start()
            self._backlog.append(request)
            self._dispatch()

    def revoke(self) -> list[Handoff]:
        """The batches not yet taken by a finisher, taken back (a stop hands them back to the
        queue); their segments are free again."""
        with self._lock:
            taken = [r for r in self._backlog if isinstance(r, Handoff)]
            self._backlog = deque(r for r in self._backlog if not isinstance(r, Handoff))
            for handoff in taken:
                self.release(handoff.segment)
            return taken

    # -- answers --------------------------------------------------------------------------------
    def poll(self, timeout: float | None = 0.0) -> list[Finished]:
        """Answers that have arrived, waiting up to `timeout` seconds (None: until one does)
        when none has; a finisher's death answers for what it held."""
        with self._lock:
            done: list[Finished] = []
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                waiting = {f.conn: f for f in self._finishers}
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                for conn in wait(list(waiting), left) if waiting else []:
                    done.extend(self._read(waiting[conn]))  # type: ignore[index]
                self._dispatch()
                if done or (deadline is not None and time.monotonic() >= deadline):
                    return done
                if not self.pending:
                    return done

    def wait_for_room(self, give_up: Callable[[], bool]) -> list[Finished]:
        """Answers, waiting for them while `in_flight` batches are handed over already, unless
        `give_up()` says to stop waiting (asked every 0.2 s: a stop must not wait for a
        finisher)."""
        done = self.poll(0.0)
        while self.in_flight >= self.limit and not give_up():
            done += self.poll(0.2)
        return done

    def wait_all(
        self, timeout: float | None = None, *, batches_only: bool = True
    ) -> list[Finished]:
        """Every answer still owed (batches only, unless told), up to `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.poll(0.0)
        while self.in_flight if batches_only else self.pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            done += self.poll(left)
        return done

    def _read(self, finisher: _Finisher) -> list[Finished]:
        try:
            message = finisher.conn.recv()
        except (EOFError, OSError):
            return self._died(finisher)
        if isinstance(message, tuple) and message[:1] == ("ready",):
            finisher.ready, self._start_failures = True, 0
            return []
        request, finisher.holding = finisher.holding, None
        if request is None:
            return []
        if isinstance(request, Handoff):
            self.release(request.segment)
        elif isinstance(message, dict) and not self._exiting:
            for problem in message.get("problems", [])[:10]:
                _log.warning("pages of job %s: %s", request.job_id, problem)
        return [Finished(request, message)]

    def _died(self, finisher: _Finisher) -> list[Finished]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            finisher.process.wait(timeout=5)
        how = finisher.how_it_ended()
        finisher.conn.close()
        self._finishers.remove(finisher)
        if not finisher.ready:
            self._start_failures += 1
            if self._start_failures >= START_FAILURES:
                self.closed = True
                raise FinishersUnavailable(
                    f"the finishing processes exit as they start ({how}, {START_FAILURES} "
                    "times); their error is on stderr above"
                )
        if not self.closed:
            self._finishers.append(_Finisher(self.nice))
        request = finisher.holding
        if request is None:
            return []
        if isinstance(request, Handoff):
            self.release(request.segment)
            message = (
                f"the finishing process {finisher.process.pid} died ({how}) while finishing "
                f"batch {request.batch_id}"
            )
            return [
                Finished(
                    request, BatchResult(request.batch_id, error=("internal", message), died=True)
                )
            ]
        return [Finished(request, {"problems": [f"the pages' process died ({how})"]})]

    def _dispatch(self) -> None:
        for finisher in self._finishers:
            if not self._backlog:
                return
            if finisher.ready and finisher.holding is None:
                request = self._backlog.popleft()
                finisher.holding = request
                # If it died, its EOF is read next and answers for the request.
                with contextlib.suppress(BrokenPipeError, OSError):
                    finisher.conn.send(request)

    # -- the end --------------------------------------------------------------------------------
    def close(self, timeout: float = 120.0, *, exiting: bool = False) -> list[Finished]:
        """Wait for every answer owed (up to `timeout`: none after a stop was asked), then
        stop the finishers and remove the shared memory; the answers that came in meanwhile.
        An idle finisher is killed (it holds nothing: still importing, say); one holding a
        request is left to finish it and exit when it finds its pipe closed (publication is
        fenced on the lease), unless `timeout` allows waiting for it."""
        with self._lock:
            self._exiting = exiting
            if stop.requested():
                timeout = 0.0  # a stop: nothing more is waited for (pages are for later runs)
            done = self.wait_all(timeout, batches_only=False) if not self.closed else []
            self.closed = True
            self._backlog.clear()
            for finisher in self._finishers:
                if finisher.holding is None:
                    finisher.process.kill()
                else:
                    with contextlib.suppress(BrokenPipeError, OSError):
                        finisher.conn.send(None)
                finisher.conn.close()
            for finisher in self._finishers:
                if finisher.holding is None:
                    finisher.process.wait()
            self._finishers.clear()
            for segment in [*self._segments.values(), *self._free]:
                _unlink(segment)
            self._segments.clear()
            self._free.clear()
            return done


def _unlink(segment: SharedMemory) -> None:
    segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()


_pool: FinisherPool | None = None


def finishers(settings: Settings) -> FinisherPool:
    """This process's pool, started on first use with the settings' sizes and kept; closed
    when the process exits (after the pages it still owes)."""
    global _pool
    if _pool is None or _pool.closed:
        processes = settings.finishers or min(8, max(1, (os.cpu_count() or 2) - 1))
        _pool = FinisherPool(
            processes, settings.finish_in_flight or processes + 1, settings.finisher_nice
        )
        _pool.start()
        atexit.register(_pool.close, exiting=True)
    return _pool


def close_finishers() -> None:
    """Stop this process's finishers (after what they owe); the next use starts new ones with
    the settings of then."""
    if _pool is not None:
        _pool.close()


def wait_for_pages(timeout: float | None = None) -> list[dict[str, Any]]:
    """Wait for the pages this process handed to its finishers (the CLI does before it says
    where they are; the process does when it exits); what each build answered."""
    if _pool is None or _pool.closed:
        return []
    done = _pool.wait_all(timeout, batches_only=False)
    return [d.answer for d in done if isinstance(d.request, PagesRequest)]
