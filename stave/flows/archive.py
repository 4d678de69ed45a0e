"""Archival, weekly: rows past their hot period move to Parquet in the object store.

Each archived table's lifecycle policy (models/) says how long rows stay hot and what travels
with them. Group by group, the rows are written, read back and checked, and only then deleted
in one transaction (tasks/archive/); a run killed at any step is finished by the next. Each
group is one Prefect task around `archive.process_group`, the same call the CLI makes, with the
run's one Arrow connection and fast-delete decision.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from stave.flows import names
from stave.flows.logs import run_logger
from stave.infra.db import get_engine
from stave.infra.objectstore import make_object_store
from stave.infra.settings import get_settings
from stave.models.lifecycle import LifecyclePolicy
from stave.tasks import archive


@task(name="archive-group", cache_policy=NO_CACHE)
def archive_group(
    policy: LifecyclePolicy, group: archive.Group, context: archive.RunContext
) -> dict[str, tuple[int, str]]:
    """Write a group's files, read them back, then delete its rows in one transaction; the
    rows and checksum written per table."""
    return archive.process_group(
        get_engine(), make_object_store(get_settings()), policy, group, context
    )


@flow(name="archive", log_prints=True, flow_run_name=names.archive)
def archive_old_records(
    older_than_days: int | None = None, dry_run: bool = False, batch_size: int | None = None
) -> dict[str, Any]:
    """Move rows older than their hot period (183 days for generation records) to Parquet.

    Args:
        older_than_days: Override every table's hot period (days).
        dry_run: Count what would move; write nothing.
        batch_size: Root rows per Parquet group (default from settings, 250000).
    """
    settings = get_settings()
    engine, store = get_engine(), make_object_store(settings)
    log = run_logger("stave.flows.archive")
    plans = archive.plan(engine, older_than_days)
    total = sum(p.rows for p in plans)
    if dry_run or total == 0:
        create_table_artifact(
            table=[p.to_dict() for p in plans],
            key="archive-plan",
            description="archival: nothing old enough" if total == 0 else "archival dry run",
        )
        if total == 0:
            log.info("nothing is older than its hot period: nothing archived")
        return {"dry_run": dry_run, "plan": [p.to_dict() for p in plans], "rows": total}

    progress_id: Any = create_progress_artifact(progress=0.0, description="archival")
    done = 0

    def process(
        policy: LifecyclePolicy, group: archive.Group, context: archive.RunContext
    ) -> dict[str, tuple[int, str]]:
        nonlocal done
        written = archive_group(policy, group, context)
        done += written.get(policy.table, (0, ""))[0]
        update_progress_artifact(progress_id, progress=round(100 * min(done, total) / total, 1))
        return written

    result = archive.run_archive(
        engine,
        store,
        settings.tmp_dir / "archive",
        older_than_days=older_than_days,
        batch_size=batch_size or settings.archive_batch_size,
        process=process,
        env_name=settings.env,
    )
    update_progress_artifact(progress_id, progress=100.0)
    summary = result.to_dict()
    create_table_artifact(
        table=[{"table": t, "rows": n} for t, n in sorted(result.rows.items())]
        + [
            {"table": "(groups)", "rows": result.groups},
            {"table": "(audio objects moved)", "rows": result.moved_objects},
            {"table": "(unfinished groups cleaned)", "rows": result.cleaned},
        ],
        key="archive-summary",
        description="archival summary",
    )
    return summary
