"""How a run that returns a summary ends: the one rule for generation and backfill runs.

Failed when its clips (assets) failed, with the count by error class; Cancelled when a signal
stopped it (a rolling restart's SIGTERM, a Ctrl-C) after it handed its batch in flight back,
so the run says it did not finish without paging anyone ("a run failed" alerts on Failed and
Crashed); else Completed with the summary as its result. The summary is the state's data in
every case, for the CLI and the API.
"""

from __future__ import annotations

import signal
from typing import Any

from prefect.states import Cancelled, Failed

from stave.infra import stop
from stave.tasks.outcome import ClipsFailed


def run_state(summary: dict[str, Any], stopped_note: str) -> Any:
    """The run's final state (or the summary itself for Completed); `stopped_note` says where
    the unfinished work went, for the Cancelled message."""
    if summary.get("failure"):
        return Failed(message=summary["failure"], data=ClipsFailed(summary["failure"], summary))
    signum = stop.signal_number()
    if stop.requested() and signum is not None:
        return Cancelled(
            message=f"stopped by {signal.Signals(signum).name}: {stopped_note}", data=summary
        )
    return summary
