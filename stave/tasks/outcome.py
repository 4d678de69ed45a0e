"""Whether a run's clips make it a failed run, and the one line that says so.

A generation, drain or backfill run that made clips some of which failed did not do its job,
whatever Prefect thinks of the code that ran: it ends Failed (the CLI exits 3), with a message
that counts the failures by error class, so an alert says what went wrong without a log.
Quarantined clips (published to quarantine by validation, not lost) fail the run when more
than `STAVE_QUARANTINE_FAILS_RUN_ABOVE` of its clips were quarantined (default 0: any).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stave.infra.errors import StaveError


class ClipsFailed(StaveError):
    """The run finished, but some of its clips (or assets) failed or were quarantined. The
    run's summary travels with it: a Failed flow run carries this as its state's data, so a
    caller (the CLI) still reports what was done."""

    exit_code = 3

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


@dataclass
class RunOutcome:
    """What a run's clips (or a backfill's assets) came to."""

    processed: int
    failed: dict[str, int] = field(default_factory=dict)  # error class -> count
    quarantined: int = 0
    what: str = "clip"

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


def failure_message(outcome: RunOutcome, quarantine_fails_above: float) -> str | None:
    """The run's failure in one line, or None when its clips make it a success."""
    parts = []
    if outcome.failed_total:
        parts.append(
            f"{outcome.failed_total} {_plural(outcome.what, outcome.failed_total)} failed "
            f"({_by_class(outcome.failed)})"
        )
    share = outcome.quarantined / outcome.processed if outcome.processed else 0.0
    if outcome.quarantined and share > quarantine_fails_above:
        parts.append(
            f"{outcome.quarantined} quarantined (validation_failed; more than "
            f"{quarantine_fails_above:.0%} of {outcome.processed})"
        )
    if not parts:
        return None
    return "; ".join(parts) + f" of {outcome.processed} {_plural(outcome.what, outcome.processed)}"


def _by_class(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _plural(word: str, n: int) -> str:
    return word if n == 1 else word + "s"
