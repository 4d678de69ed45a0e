"""A finishing process: `python -m stave.tasks.finishing.worker FD NICE`.

Started by the model's process (`pool.py`) with one end of a pipe as file descriptor FD; it
takes requests from it one at a time (a batch to finish, a job's pages to build) and answers
each. It ignores SIGINT and SIGTERM: a Ctrl-C reaches the whole process group and systemd
signals every process of a service, but what a finisher holds is the model's process's to
settle (it waits for the batches in hand, hands back the rest, then closes the pipe). It ends
when the pipe closes, the model's process having exited or died, after answering the request
in hand: publication is fenced on the lease, so a late answer publishes nothing twice.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from stave.tasks.finishing.handoff import Handoff, PagesRequest


def serve(conn: Connection) -> None:
    from stave.tasks import validation
    from stave.tasks.finishing.finish import build_pages, finish

    # Great Expectations (3 s) before saying ready: a batch sent meanwhile would block the
    # sender on the pipe until this process read it.
    validation.preload()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request: Any = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        started = time.process_time()
        if isinstance(request, Handoff):
            answer: Any = finish(request)
            answer.cpu["process"] = time.process_time() - started
        elif isinstance(request, PagesRequest):
            answer = build_pages(request)
            answer["cpu_s"] = time.process_time() - started
        else:
            answer = ValueError(f"unknown request {type(request).__name__}")
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            return


def main(argv: list[str]) -> None:
    fd, nice = int(argv[0]), int(argv[1])
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    if nice:
        os.nice(nice)  # below the model's process: the GPU's driver thread comes first
    with Connection(fd) as conn:
        serve(conn)


if __name__ == "__main__":
    main(sys.argv[1:])
