"""Prometheus metrics, read from the database at scrape time.

Every number is a query over the records, not a counter kept in some process: any host can
serve them (`stave metrics serve`), restarts lose nothing, and two servers agree. A scrape
costs a handful of indexed queries; answers are kept for a few seconds so several scrapers
(or a fast scrape interval) cost one set of queries.

Clip counts are the hot tables' rows: archival moves old rows out, which Prometheus reads as a
counter reset (rate() and increase() handle it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from stave.models import PRIORITIES, archive_policies
from stave.tasks import drain_runs
from stave.tasks.archive import count_eligible, cutoff_for
from stave.tasks.archiver import archiver_status

CACHE_S = 5.0


class StaveCollector(Collector):
    """The `stave_*` metrics, each with HELP text, from one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > CACHE_S:
                with self.engine.connect() as conn:
                    self._cached = (now, list(measure(conn)))
            metrics = self._cached[1]
        yield from metrics


def measure(conn: Connection) -> Iterator[Metric]:
    yield from _queue(conn)
    yield from _gpu_busy(conn)
    yield from _clips(conn)
    yield from _coverage(conn)
    yield from _backups(conn)
    yield from _wal_archiver(conn)
    yield from _archive_lag(conn)


def _queue(conn: Connection) -> Iterator[Metric]:
    tasks = GaugeMetricFamily(
        "stave_tasks",
        "Generation tasks waiting or being made, by status and the job's class.",
        labels=["status", "priority"],
    )
    counts: dict[tuple[str, str], int] = {}
    # Pending from the queue's streams (kept with every change to or from pending); running
    # from the tasks themselves (a small set: the fleet's batches in flight).
    for priority, n in conn.execute(
        text("SELECT priority, coalesce(sum(pending), 0) FROM queue_stream GROUP BY 1")
    ).all():
        counts[("pending", priority)] = int(n)
    for priority, n in conn.execute(
        text(
            "SELECT j.priority, count(*) FROM generation_task t "
            "JOIN generation_job j ON j.id = t.job_id WHERE t.status = 'running' GROUP BY 1"
        )
    ).all():
        counts[("running", priority)] = int(n)
    for status in ("pending", "running"):
        for priority in PRIORITIES:
            tasks.add_metric([status, priority], counts.get((status, priority), 0))
    yield tasks
    oldest = GaugeMetricFamily(
        "stave_oldest_pending_task_age_seconds",
        "Age of the oldest pending generation task of each class (0 when none is pending).",
        labels=["priority"],
    )
    ages = dict(
        conn.execute(
            text(
                """
                SELECT q.priority, EXTRACT(EPOCH FROM now() - min(first.created_at))
                FROM queue_stream q CROSS JOIN LATERAL (
                    SELECT created_at FROM generation_task
                    WHERE job_id = q.job_id AND user_id = q.user_id AND status = 'pending'
                    ORDER BY created_at LIMIT 1
                ) first
                WHERE q.pending > 0
                GROUP BY 1
                """
            )
        )
        .tuples()
        .all()
    )
    for priority in PRIORITIES:
        oldest.add_metric([priority], float(ages.get(priority) or 0.0))
    yield oldest


# A drain updates its row after every batch: one not updated for this long has ended or died.
GPU_BUSY_WINDOW_S = 600.0


def _gpu_busy(conn: Connection) -> Iterator[Metric]:
    busy = GaugeMetricFamily(
        "stave_gpu_busy_ratio",
        "Each drain's model time over its wall so far (drains updated in the last 10 minutes, "
        "by worker): near 1 the GPU is the limit, near 0.2 the platform around it is.",
        labels=["worker", "host"],
    )
    seen: set[str] = set()
    for run in drain_runs.recent(conn, GPU_BUSY_WINDOW_S):
        if run.worker in seen or run.wall_s <= 0:
            continue
        seen.add(run.worker)
        busy.add_metric([run.worker, run.host], round(run.model_s / run.wall_s, 4))
    yield busy


def _clips(conn: Connection) -> Iterator[Metric]:
    clips = CounterMetricFamily(
        "stave_clips",
        "Clips that reached an end, by outcome (published, quarantined, failed) and error "
        "class (none for published), counted from the hot tables.",
        labels=["outcome", "error_class"],
    )
    rows = conn.execute(
        text(
            "SELECT status, coalesce(error_class, 'none'), count(*) FROM generation_task "
            "WHERE status IN ('published', 'quarantined', 'failed') GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ).all()
    for status, error_class, n in rows:
        label = "none" if status == "published" else error_class
        clips.add_metric([status, label], int(n))
    yield clips


def _coverage(conn: Connection) -> Iterator[Metric]:
    coverage = GaugeMetricFamily(
        "stave_embedding_coverage_ratio",
        "Share of audio assets that have an embedding, by encoder version.",
        labels=["encoder_version"],
    )
    assets = int(conn.execute(text("SELECT count(*) FROM audio_asset")).scalar_one())
    for version, n in conn.execute(
        text("SELECT encoder_version, count(*) FROM latent_embedding GROUP BY 1 ORDER BY 1")
    ).all():
        coverage.add_metric([version], (int(n) / assets) if assets else 0.0)
    yield coverage


def _backups(conn: Connection) -> Iterator[Metric]:
    verified = conn.execute(
        text(
            "SELECT max(verified_at) FROM backup_record WHERE status = 'succeeded' "
            "AND verified_at IS NOT NULL"
        )
    ).scalar()
    age = (datetime.now(UTC) - verified).total_seconds() if verified else float("inf")
    yield GaugeMetricFamily(
        "stave_last_verified_backup_age_seconds",
        "Seconds since the newest backup that passed a restore drill (+Inf: none has).",
        value=age,
    )


def _wal_archiver(conn: Connection) -> Iterator[Metric]:
    """Continuous archiving, from the server's own archiver statistics: whether it is on, how
    long since a segment reached the store, and whether the latest attempt failed."""
    archiver = archiver_status(conn)
    last = archiver.last_archived
    yield GaugeMetricFamily(
        "stave_wal_archiving", "1 when the server archives WAL to the store.", value=archiver.on
    )
    yield GaugeMetricFamily(
        "stave_wal_last_archived_age_seconds",
        "Seconds since the server last archived a WAL segment (+Inf: never since its start).",
        value=(datetime.now(UTC) - last).total_seconds() if last else float("inf"),
    )
    yield GaugeMetricFamily(
        "stave_wal_archive_failing",
        "1 when the archiver's latest attempt failed (segments pile up in pg_wal; RPO grows).",
        value=archiver.failing,
    )


def _archive_lag(conn: Connection) -> Iterator[Metric]:
    lag = GaugeMetricFamily(
        "stave_archive_lag_rows",
        "Rows past their hot period (lifecycle policy) not yet archived, by table.",
        labels=["table"],
    )
    now = datetime.now(UTC)
    for policy in archive_policies():
        lag.add_metric([policy.table], count_eligible(conn, policy, cutoff_for(policy, None, now)))
    yield lag


def exposition(engine: Engine) -> str:
    """The metrics in Prometheus' text format, once (`stave metrics show`)."""
    return generate_latest(registry_for(engine)).decode()


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry holding only Stave's metrics (not the process's own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StaveCollector(engine))
    return registry
