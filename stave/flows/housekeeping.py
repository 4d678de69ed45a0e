"""Prefect housekeeping, daily: finished flow runs older than the retention go, with their task
runs, logs and artifacts, so Prefect's database does not grow without bound.

Only runs in a final state (completed, failed, cancelled, crashed) that ended before the
cut-off are touched; anything scheduled, pending or running is left alone. Stave's own records
(jobs, tasks, backups) live in PostgreSQL and are not affected.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from stave.flows import names
from stave.flows.logs import run_logger
from stave.infra.settings import get_settings

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
PAGE = 200


@task(name="prune-flow-runs", cache_policy=NO_CACHE)
def prune_flow_runs(cutoff: datetime, limit: int | None) -> dict[str, int]:
    finished = FlowRunFilter(
        end_time=FlowRunFilterEndTime(before_=cutoff),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in FINAL])),
    )
    removed = {"flow_runs": 0, "artifacts": 0}
    with get_client(sync_client=True) as client:
        while limit is None or removed["flow_runs"] < limit:
            page = client.read_flow_runs(flow_run_filter=finished, limit=PAGE)
            if not page:
                break
            if limit is not None:
                page = page[: limit - removed["flow_runs"]]
            ids = [run.id for run in page]
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            )
            for artifact in artifacts:
                client.delete_artifact(artifact.id)
            removed["artifacts"] += len(artifacts)
            for run_id in ids:
                # The server deletes the run's task runs and logs with it.
                client.delete_flow_run(run_id)
            removed["flow_runs"] += len(ids)
    return removed


@flow(name="prefect-housekeeping", log_prints=True, flow_run_name=names.housekeeping)
def prefect_housekeeping(keep_days: int | None = None, limit: int | None = None) -> dict[str, Any]:
    """Delete finished flow runs (and their task runs, logs, artifacts) older than the retention.

    Args:
        keep_days: Days of finished runs to keep (default: STAVE_PREFECT_RETENTION_DAYS, 30).
        limit: At most this many flow runs this time (default: all that are old enough).
    """
    days = keep_days if keep_days is not None else get_settings().prefect_retention_days
    cutoff = datetime.now(UTC) - timedelta(days=days)
    removed = prune_flow_runs(cutoff, limit)
    run_logger("stave.flows.housekeeping").info(
        "removed %s flow run(s) and %s artifact(s) that ended before %s",
        removed["flow_runs"],
        removed["artifacts"],
        cutoff.isoformat(),
    )
    summary = {"cutoff": cutoff.isoformat(), "keep_days": days, **removed}
    create_table_artifact(
        table=[{"measure": k, "value": str(v)} for k, v in summary.items()],
        key="prefect-housekeeping",
        description="Prefect housekeeping",
    )
    return summary
