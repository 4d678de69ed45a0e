"""`stave metrics serve`, scraped over HTTP after a real job, against the database itself."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.settings import Settings
from tests.test_cli import STAVE
from tests.utils.net import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def metrics_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAVE_")}
    env.update(STAVE_HOME=str(tmp_path / "home"), STAVE_DATABASE_URL=database_url)
    server = subprocess.Popen(
        [STAVE, "metrics", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.communicate()
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err  # SIGTERM stops it cleanly
    assert "Traceback" not in out + err


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    families = text_string_to_metric_families(httpx.get(url, timeout=30).text)
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families:
        assert family.name.startswith("stave_") and family.documentation, family.name
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_metrics_after_a_real_job_match_the_database(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings], metrics_url: str
) -> None:
    from stave.flows.generate import generate

    stave_env(default_duration_s=1, default_steps=2)
    tag = os.urandom(4).hex()
    summary = generate(
        rows=[{"prompt": f"warm organ chords {tag} {i}", "seed": i} for i in range(2)]
    )
    assert summary["published"] == 2
    time.sleep(5.1)  # past the collector's cache: the job's clips are counted
    found = scrape(metrics_url)
    with engine.connect() as conn:
        by_status = {
            (status, error_class or "none"): n
            for status, error_class, n in conn.execute(
                text(
                    "SELECT status, CASE WHEN status = 'published' THEN NULL ELSE error_class END, "
                    "count(*) FROM generation_task "
                    "WHERE status IN ('published', 'quarantined', 'failed') GROUP BY 1, 2"
                )
            ).all()
        }
        pending = conn.execute(
            text("SELECT count(*) FROM generation_task WHERE status = 'pending'")
        ).scalar_one()
        version, covered = conn.execute(
            text(
                "SELECT e.encoder_version, count(*)::float / (SELECT count(*) FROM audio_asset) "
                "FROM latent_embedding e JOIN audio_asset a ON a.id = e.asset_id "
                "JOIN generation_task t ON t.id = a.task_id WHERE t.prompt LIKE :tag "
                "GROUP BY 1"
            ),
            {"tag": f"%{tag}%"},
        ).one()
    clips = {(lb["outcome"], lb["error_class"]): v for lb, v in found["stave_clips_total"]}
    assert clips == {key: float(n) for key, n in by_status.items()}
    assert clips[("published", "none")] >= 2
    tasks: dict[str, float] = {}
    for labels, value in found["stave_tasks"]:  # by status and class
        tasks[labels["status"]] = tasks.get(labels["status"], 0.0) + value
    assert tasks["pending"] == pending
    coverage = {lb["encoder_version"]: v for lb, v in found["stave_embedding_coverage_ratio"]}
    assert 0 < coverage[version] <= 1.0 and coverage[version] >= covered
    assert {lb["table"] for lb, _ in found["stave_archive_lag_rows"]} >= {"generation_task"}
    assert len(found["stave_last_verified_backup_age_seconds"]) == 1
    # The session's server does not archive WAL: said, and nothing failing.
    assert found["stave_wal_archiving"][0][1] == 0.0
    assert found["stave_wal_archive_failing"][0][1] == 0.0
    assert found["stave_wal_last_archived_age_seconds"][0][1] == float("inf")
    assert found["stave_oldest_pending_task_age_seconds"][0][1] >= 0
    # How busy the model was, per drain that ran lately: this job's drain among them.
    with engine.connect() as conn:
        worker, model_s, wall_s = conn.execute(
            text("SELECT worker, model_s, wall_s FROM drain_run WHERE job_id = :j"),
            {"j": summary["job_id"]},
        ).one()
    busy = {lb["worker"]: v for lb, v in found["stave_gpu_busy_ratio"]}
    assert 0 < model_s < wall_s and busy[worker] == round(model_s / wall_s, 4)
