"""Flow run names that say what a run is for (the UI's run list, alerts), made from its
parameters when it starts: `generate-prompts-3f2a91c0`, `backfill-stave-ae-0123…-2026-01-01`,
`backup-2026-11-30`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect.runtime import flow_run


def _parameters() -> dict[str, Any]:
    return dict(flow_run.parameters or {})


def _day() -> str:
    started = flow_run.scheduled_start_time
    moment = started if isinstance(started, datetime) else datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d-%H%M")


def generate() -> str:
    p = _parameters()
    if p.get("job_id"):
        return f"generate-job-{str(p['job_id'])[:13]}"
    if p.get("file_key"):
        stem = str(p["file_key"]).rsplit("/", 1)[-1].split(".", 1)[0]
        return f"generate-file-{stem[:12]}"
    return f"generate-{len(p.get('rows') or [])}-rows-{_day()}"


def job_control() -> str:
    p = _parameters()
    return f"job-{str(p.get('job_id'))[:13]}-{p.get('action', 'control')}"


def drain() -> str:
    job = _parameters().get("job_id")
    return f"drain-{str(job)[:13] if job else 'all'}-{_day()}"


def backfill() -> str:
    p = _parameters()
    version = p.get("encoder_version") or "current"
    span = "-".join(str(p[k])[:10] for k in ("created_after", "created_before") if p.get(k))
    dry = "-dry-run" if p.get("dry_run") else ""
    return f"backfill-{version}{'-' + span if span else ''}{dry}"


def backup() -> str:
    return f"backup-{_day()}"


def archive() -> str:
    dry = "-dry-run" if _parameters().get("dry_run") else ""
    return f"archive-{_day()}{dry}"


def train() -> str:
    return f"train-{_parameters().get('run_name', 'default')}"
