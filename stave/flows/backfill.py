"""Latent backfill: embeddings for an encoder version over existing clips, resumably.

Operators run it as a deployment with parameters (or `stave backfill`). It finds the assets in
scope that lack an embedding for the version, encodes them batch by batch on the GPU pool, and
upserts each batch with its checkpoint in one transaction; a cancelled or crashed run resumes
where it stopped. A new version's HNSW index is built once at the end (building it after the
load is much faster than growing it row by row).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from stave.flows import names
from stave.flows.ending import run_state
from stave.flows.logs import run_logger
from stave.flows.steps import backfill as steps
from stave.infra import stop
from stave.infra.db import get_engine
from stave.infra.errors import InvalidInput
from stave.infra.settings import get_settings
from stave.tasks import backfill
from stave.tasks.encoders import load_encoder
from stave.tasks.outcome import RunOutcome, failure_message


@flow(name="backfill-embeddings", log_prints=True, flow_run_name=names.backfill)
def backfill_embeddings(
    encoder_version: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    model_version: str | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    checkpoint: str | None = None,
) -> Any:  # the summary, or a Failed state carrying it
    """Compute latent embeddings for clips that lack them for an encoder version.

    Args:
        encoder_version: The version to compute (default: the configured checkpoint's encoder).
        created_after: Only clips created at or after this time (UTC when no zone is given).
        created_before: Only clips created before this time (UTC when no zone is given).
        model_version: Only clips made by this model version (its id, version or name:version).
        batch_size: Clips per batch, one transaction and checkpoint each (default from
            settings, 2000).
        limit: Stop after this many clips; the next run resumes from there.
        dry_run: Count the clips and estimate the time from a measured sample; write nothing.
        checkpoint: A checkpoint file whose encoder to use (for a version not configured here).
    """
    stop.reclaim()  # a CLI-run flow stops on SIGTERM as on Ctrl-C
    settings = get_settings()
    engine = get_engine()
    log = run_logger("stave.flows.backfill")
    if batch_size is not None and not 1 <= batch_size <= 10_000:
        raise InvalidInput(f"batch_size {batch_size}: must be between 1 and 10000")
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit {limit}: must not be negative")
    encoder = load_encoder(engine, settings, encoder_version, checkpoint)
    spec = (encoder.version, checkpoint)
    scope = backfill.resolve_scope(
        engine, encoder.version, created_after, created_before, model_version
    )
    size = batch_size or settings.backfill_batch_size
    if dry_run:
        plan = steps.estimate(spec, scope, min(size, 16))
        plan["batches"] = -(-plan["assets"] // size)
        create_table_artifact(
            table=[{"measure": k, "value": str(v)} for k, v in plan.items()],
            key="backfill-plan",
            description=f"dry run: backfill of {encoder.version} (nothing written)",
        )
        log.info(
            "dry run: %s clip(s) lack %s; about %.0f s",
            plan["assets"],
            encoder.version,
            plan["estimated_seconds"],
        )
        return {"dry_run": True, **plan}

    progress_id: Any = create_progress_artifact(
        progress=0.0, description=f"backfill of {encoder.version}"
    )

    def on_progress(run: backfill.Run, progress: backfill.Progress) -> None:
        update_progress_artifact(progress_id, progress=round(100 * progress.fraction, 1))
        if progress.batches % 10 == 0:
            log.info(
                "backfill %s: %d written, %d failed this run",
                run.id,
                progress.written,
                progress.failed,
            )

    def process(run: backfill.Run, refs: Any, cursor: Any) -> backfill.BatchResult:
        return steps.backfill_batch(spec, run, refs, cursor)

    run, progress, status = backfill.run_backfill(engine, scope, process, size, limit, on_progress)
    index = steps.build_index(encoder.version) if status == "completed" else {}
    if index.get("warning"):
        log.warning(index["warning"])
    summary: dict[str, Any] = {
        "run_id": str(run.id),
        "encoder_version": encoder.version,
        "status": status,
        "resumed": run.resumed,
        "planned": run.planned,
        "written_total": run.written + progress.written,
        "failed_total": run.failed + progress.failed,
        **progress.stats(),
        "index": index.get("index"),
    }
    update_progress_artifact(
        progress_id, progress=100.0 if status == "completed" else round(100 * progress.fraction, 1)
    )
    summary["failure"] = failure_message(
        RunOutcome(progress.written + progress.failed, dict(progress.failed_by), what="asset"),
        quarantine_fails_above=0.0,
    )
    create_table_artifact(
        table=[{"measure": k, "value": str(v)} for k, v in summary.items()],
        key=f"backfill-summary-{run.id}",
        description=f"backfill of {encoder.version}: {status}",
    )
    # Truthful: Failed when it did not embed every asset it was given (`stave embeddings
    # status` lists each failure and its reason); Cancelled when a signal stopped it.
    return run_state(summary, f"resumes from run {run.id}'s checkpoint")
