"""Bulk generation end to end under Prefect's harness: the real model on tiny inputs, the real
database, the filesystem store and the S3 server; faults included."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.embedded_pg import EmbeddedPostgres
from stave.infra.errors import InvalidInput
from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.tasks import finishing
from stave.tasks.intake import upload_prompts
from stave.tasks.records import job_detail
from tests.test_gallery import CHROMIUM, open_in_chromium
from tests.utils.flaky_proxy import FlakyProxy

pytestmark = pytest.mark.integration

TINY = {"default_duration_s": 1, "default_steps": 2, "retry_backoff_s": 0.2, "batch_size": 4}


def prompt_file(tmp_path: Path, rows: list[dict[str, Any]], name: str = "prompts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def unique_rows(n: int, **extra: Any) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:6]
    return [
        {"prompt": f"bright bell arpeggio in D minor, 96 bpm, take {tag}-{i}", "seed": i, **extra}
        for i in range(n)
    ]


def job_tasks(engine: Engine, job_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT t.id, t.prompt, t.status, t.attempts, t.error_class, t.provenance, "
                    "a.id AS asset, a.object_key, a.sha256, a.duration_s, a.sample_rate, "
                    "e.embedding "
                    "FROM generation_task t LEFT JOIN audio_asset a ON a.task_id = t.id "
                    "LEFT JOIN latent_embedding e ON e.asset_id = a.id "
                    "WHERE t.job_id = :j ORDER BY t.created_at, t.id"
                ),
                {"j": job_id},
            ).all()
        )


def test_generate_publishes_validated_clips_once_and_they_regenerate_bit_for_bit(
    prefect_api: str, engine: Engine, tmp_path: Path, stave_env: Callable[..., Settings]
) -> None:
    from stave.flows.generate import generate
    from stave.tasks.regenerate import regenerate

    settings = stave_env(**TINY)
    rows = [*unique_rows(5), {"prompt": "bad", "steps": 0}]
    rows[1]["duration_s"] = 2
    path = prompt_file(tmp_path, rows)
    uploaded = upload_prompts(make_object_store(settings), path, env_name=settings.env).file_key
    summary = generate(file_key=uploaded)
    assert summary["published"] == 5
    assert summary["rejected"] == 1 and summary["created"]

    store = make_object_store(settings)
    tasks = job_tasks(engine, summary["job_id"])
    assert [t.status for t in tasks] == ["published"] * 5
    for task in tasks:
        assert store.verify(task.object_key, expected_sha256=task.sha256)
        assert task.object_key == f"dev/audio/{task.asset}.flac"
        assert task.sample_rate == 16000
        assert abs(np.linalg.norm(np.asarray(task.embedding.to_numpy())) - 1) < 1e-3
        record = task.provenance
        for key in ("prompt", "infer_step", "guidance_scale", "scheduler_type", "actual_seeds"):
            assert key in record
        assert len(record["checkpoint_sha256"]) == 64 and record["dtype"] == "float32"
        assert record["code_version"] and record["libraries"]["torch"]
    longer = next(t for t in tasks if t.prompt == rows[1]["prompt"])
    assert abs(longer.duration_s - 2) < 0.01

    with engine.connect() as conn:
        runs = conn.execute(
            text("SELECT success, statistics FROM validation_run WHERE job_id = :j"),
            {"j": summary["job_id"]},
        ).all()
    assert runs and all(r.success for r in runs)
    assert sum(r.statistics["clips"] for r in runs) == 5
    finishing.wait_for_pages()  # built after the run, by a finishing process
    assert (settings.data_docs_dir / "index.html").is_file()
    # How busy the model was: in the summary, and on the job's drain record (`stave job`).
    assert 0 < summary["gpu_busy"] < 1
    assert {"finishers: encode", "finishers: put", "finishers: publish"} <= set(summary["cpu_s"])
    gpu = job_detail(engine, summary["job_id"])["gpu"]
    assert gpu["runs"] == 1 and 0 < gpu["model_s"] < gpu["wall_s"]
    assert gpu["gpu_busy"] == pytest.approx(summary["gpu_busy"], abs=0.01)

    # The same file again: nothing new, the same job.
    again = generate(file_key=uploaded)
    assert again["job_id"] == summary["job_id"] and not again["created"]
    assert len(job_tasks(engine, summary["job_id"])) == 5

    # Any clip, from its record alone: its batch is named by a key its members share, not
    # listed in every record.
    batch = tasks[2].provenance["batch"]
    assert set(batch) == {"key", "position", "size"} and batch["size"] > 1
    assert sum(t.provenance["batch"]["key"] == batch["key"] for t in tasks) == batch["size"]
    made = regenerate(engine, tasks[2].id)
    assert made.matches and made.sha256 == tasks[2].sha256

    # A record from before the key, listing its batch's members, replays as it did.
    mates = sorted(
        (t for t in tasks if t.provenance["batch"]["key"] == batch["key"]),
        key=lambda t: t.provenance["batch"]["position"],
    )
    members = [
        {
            "prompt": t.provenance["prompt"],
            "duration_s": t.provenance["audio_duration"],
            "guidance": t.provenance["guidance_scale"],
            "seed": t.provenance["actual_seeds"][0],
        }
        for t in mates
    ]
    old = {**tasks[2].provenance, "batch": {"position": batch["position"], "members": members}}
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE generation_task SET provenance = CAST(:p AS jsonb) WHERE id = :id"),
            {"p": json.dumps(old), "id": tasks[2].id},
        )
    assert regenerate(engine, tasks[2].id).matches

    # A batch whose member is gone cannot be replayed: one line says so.
    other = next(t for t in mates if t.id != tasks[2].id)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE generation_task SET provenance = CAST(:p AS jsonb) WHERE id = :id"),
            {"p": json.dumps(tasks[2].provenance), "id": tasks[2].id},
        )
        conn.execute(
            text(
                "UPDATE generation_task SET provenance = jsonb_set(provenance, '{batch,key}', "
                "'\"elsewhere\"') WHERE id = :id"
            ),
            {"id": other.id},
        )
    with pytest.raises(InvalidInput, match="cannot be replayed"):
        regenerate(engine, tasks[2].id)


def test_progress_and_summary_artifacts_are_written(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings], tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from stave.flows.generate import generate

    settings = stave_env(**{**TINY, "batch_size": 2})
    path = prompt_file(tmp_path, [*unique_rows(5), {"prompt": "x", "guidance": 99}])
    state = generate(
        file_key=upload_prompts(make_object_store(settings), path, env_name=settings.env).file_key,
        return_state=True,
    )
    summary = state.result()
    job = summary["job_id"]
    with get_client(sync_client=True) as client:
        found = {
            a.key: a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=[
                            f"generation-summary-{job}",
                            f"generation-progress-{job}",
                            f"rejected-rows-{job}",
                        ]
                    )
                )
            )
        }
    assert set(found) == {
        f"generation-summary-{job}",
        f"generation-progress-{job}",
        f"rejected-rows-{job}",
    }
    assert found[f"generation-progress-{job}"].data == 100.0
    assert "guidance" in str(found[f"rejected-rows-{job}"].data)
    # Task runs grow with batches (3 of 2 clips here), not clips: 5 per batch, plus submit,
    # the final empty claim, the Data Docs build and the pages' publishing.
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
    assert names.count("generate-batch") == 3
    assert len(runs) <= 3 * 5 + 5


def test_clips_failing_the_suite_are_quarantined_with_the_failed_expectations(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings]
) -> None:
    from stave.flows.generate import generate

    stave_env(**TINY, min_loudness_lufs=-1)  # no clip is that loud
    state = generate(rows=unique_rows(2), return_state=True)
    # Quarantined clips fail the run by default (STAVE_QUARANTINE_FAILS_RUN_ABOVE=0).
    assert state.is_failed()
    assert state.message == "2 quarantined (validation_failed; more than 0% of 2) of 2 clips"
    summary = state.result(raise_on_failure=False).summary
    assert summary["quarantined"] == 2 and summary["published"] == 0
    tasks = job_tasks(engine, summary["job_id"])
    assert all(t.error_class == "validation_failed" and t.embedding is None for t in tasks)
    assert all(t.asset is not None for t in tasks)  # the audio is kept for inspection
    with engine.connect() as conn:
        detail = conn.execute(
            text("SELECT detail FROM task_event WHERE task_id = :t AND to_status = 'quarantined'"),
            {"t": tasks[0].id},
        ).scalar_one()
    assert {
        "expectation": "expect_column_values_to_be_between",
        "column": "loudness_lufs",
    }.items() <= detail["failed_expectations"][0].items()


def test_store_outage_fails_the_batch_as_storage_unavailable_and_the_retry_publishes(
    prefect_api: str,
    engine: Engine,
    s3_endpoint: str,
    bucket_name: str,
    stave_env: Callable[..., Settings],
) -> None:
    from stave.flows.generate import generate, run_pending
    from stave.tasks.gc import sweep

    with FlakyProxy(s3_endpoint, failures=10**9) as proxy:
        settings = stave_env(
            **TINY,
            s3_endpoint=proxy.endpoint,
            s3_access_key="test-access",
            s3_secret_key="test-secret",
            s3_max_retries=0,
            bucket=bucket_name,
        )
        queued = generate(rows=unique_rows(3), run=False)
        job = queued["job_id"]

        def restore_when_failed() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    seen = conn.execute(
                        text(
                            "SELECT count(*) FROM task_event e JOIN generation_task t "
                            "ON t.id = e.task_id WHERE t.job_id = :j "
                            "AND e.detail->>'error_class' = 'storage_unavailable'"
                        ),
                        {"j": job},
                    ).scalar_one()
                if seen:
                    proxy.failures_left = 0
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=restore_when_failed)
        watcher.start()
        summary = run_pending(job_id=uuid.UUID(job))
        watcher.join()
        assert summary["published"] == 3
        tasks = job_tasks(engine, job)
        assert all(t.status == "published" and t.attempts == 2 for t in tasks)
        with engine.connect() as conn:
            trail = conn.execute(
                text(
                    "SELECT e.to_status, e.detail->>'error_class' FROM task_event e "
                    "WHERE e.task_id = :t ORDER BY e.id"
                ),
                {"t": tasks[0].id},
            ).all()
        assert [tuple(r) for r in trail] == [
            ("pending", None),
            ("running", None),
            ("pending", "storage_unavailable"),
            ("running", None),
            ("published", None),
        ]
        assert (
            sweep(
                engine,
                make_object_store(settings),
                env_name=settings.env,
                delete=False,
                grace=_no_grace(),
            ).orphans
            == []
        )


def _no_grace() -> Any:
    from datetime import timedelta

    return timedelta(0)


def test_a_killed_worker_s_tasks_are_claimed_again_after_the_lease(
    prefect_api: str,
    engine: Engine,
    database_url: str,
    stave_env: Callable[..., Settings],
) -> None:
    from stave.flows.generate import generate, run_pending

    stave_env(**TINY)
    queued = generate(rows=unique_rows(4, duration_s=20, steps=8), run=False)
    job = queued["job_id"]
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "STAVE_LEASE_S": "2",
        "STAVE_BATCH_SIZE": "4",
    }
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "stave"), "run-pending", "--job", job],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = {t.status for t in job_tasks(engine, job)}
            if "running" in states:
                break
            assert worker.poll() is None, "the worker exited before claiming"
            time.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
    finally:
        worker.wait(timeout=30)
    assert {t.status for t in job_tasks(engine, job)} == {"running"}
    time.sleep(2.2)  # the dead worker's lease runs out
    summary = run_pending(job_id=uuid.UUID(job))
    assert summary["published"] == 4
    tasks = job_tasks(engine, job)
    assert all(t.attempts == 2 for t in tasks)
    assert len({t.asset for t in tasks}) == 4  # one clip per task, none twice
    with engine.connect() as conn:
        reclaimed = conn.execute(
            text(
                "SELECT count(*) FROM task_event e JOIN generation_task t ON t.id = e.task_id "
                "WHERE t.job_id = :j AND e.detail->>'reclaimed' = 'true'"
            ),
            {"j": job},
        ).scalar_one()
    assert reclaimed == 4


def test_database_restart_mid_run_leaves_no_half_written_records(
    prefect_api: str,
    engine: Engine,
    pg_cluster: EmbeddedPostgres,
    stave_env: Callable[..., Settings],
) -> None:
    from stave.flows.generate import generate, run_pending

    stave_env(**{**TINY, "batch_size": 2})
    queued = generate(rows=unique_rows(6), run=False)
    job = queued["job_id"]

    def restart_after_first_publish() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if any(t.status == "published" for t in job_tasks(engine, job)):
                    break
            except Exception:
                pass
            time.sleep(0.02)
        pg_cluster.stop()
        pg_cluster.ensure_running()

    restarter = threading.Thread(target=restart_after_first_publish)
    restarter.start()
    try:
        run_pending(job_id=uuid.UUID(job))
    except Exception as err:  # failing is allowed, if it says why in one line
        assert "database" in str(err).lower() or "connection" in str(err).lower()
    restarter.join()
    time.sleep(0.1)
    summary = run_pending(job_id=uuid.UUID(job))
    # Anything a dead lease still holds comes back once the lease ends; here leases are long,
    # so the second run finishes every task that was not in flight at the restart.
    tasks = job_tasks(engine, job)
    for task in tasks:
        if task.status == "published":
            assert task.asset is not None and task.embedding is not None
        else:
            assert task.asset is None
    assert summary["published"] + summary["running"] + summary["pending"] == 6


def test_inference_waits_for_a_slot_of_the_gpu_concurrency_limit(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    from stave.flows.generate import generate

    stave_env(**TINY)
    generate(rows=unique_rows(1))  # model and suite loaded: the timed run below is ~1 s
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    # A new limit name: gpu_slot looks it up afresh (it remembers names, not answers).
    stave_env(**TINY, gpu_concurrency_limit=name)
    held, released = threading.Event(), threading.Event()

    def occupy_the_only_slot() -> None:
        with concurrency(name, occupy=1, strict=True):
            held.set()
            time.sleep(4)
            released.set()

    holder = threading.Thread(target=occupy_the_only_slot)
    holder.start()
    assert held.wait(30)
    summary = generate(rows=unique_rows(2))
    # The flow alone takes about a second: returning after the 4 s hold means it waited.
    waited = released.is_set()
    holder.join()
    assert summary["published"] == 2
    assert waited
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert limit.active_slots == 0


def test_a_run_whose_clips_failed_ends_failed_with_the_classes_counted(
    prefect_api: str,
    engine: Engine,
    stave_env: Callable[..., Settings],
    s3_endpoint: str,
    bucket_name: str,
) -> None:
    """Truthful states: clips that failed for good (one attempt, the store refusing every
    clip) fail the run, with a message that counts them by error class; the summary
    artifact is still written and the summary travels with the Failed state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from stave.flows.generate import generate
    from stave.tasks.outcome import ClipsFailed

    with FlakyProxy(s3_endpoint, failures=0, failing_paths=("/audio/",)) as proxy:
        stave_env(
            **TINY,
            max_attempts=1,
            s3_endpoint=proxy.endpoint,
            s3_access_key="test-access",
            s3_secret_key="test-secret",
            s3_max_retries=0,
            bucket=bucket_name,
        )
        state = generate(rows=unique_rows(3), return_state=True)
    assert state.is_failed()
    assert state.message == "3 clips failed (storage_unavailable 3) of 3 clips"
    failed = state.result(raise_on_failure=False)
    assert isinstance(failed, ClipsFailed) and failed.exit_code == 3
    job = failed.summary["job_id"]
    assert failed.summary["failed"] == 3 and failed.summary["failure"] == state.message
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"generation-summary-{job}"])
            )
        )
    assert found  # the summary is there for whoever opens the failed run


def test_quarantined_clips_within_the_threshold_leave_the_run_completed(
    prefect_api: str, stave_env: Callable[..., Settings]
) -> None:
    from stave.flows.generate import generate

    # Louder than any clip can be: every clip is quarantined, and the setting allows all.
    stave_env(**TINY, min_loudness_lufs=-1, quarantine_fails_run_above=1.0)
    state = generate(rows=unique_rows(2), return_state=True)
    assert state.is_completed() and state.result()["quarantined"] == 2


def test_the_ui_form_s_rows_are_typed_with_the_intake_s_limits(prefect_api: str) -> None:
    """The bulk-generation form: rows are PromptRow objects whose fields carry the limits the
    intake enforces, so a bad value is refused in the form, before any run starts."""
    from prefect.utilities.callables import parameter_schema

    from stave.flows.generate import generate

    schema = parameter_schema(generate).model_dump()
    assert "file" not in schema["properties"]  # no worker-local path in the form
    row = schema["definitions"]["PromptRow"]
    fields = row["properties"]
    assert row["required"] == ["prompt"] and row["additionalProperties"] is False
    assert fields["prompt"]["maxLength"] == 512 and fields["prompt"]["description"]
    duration = next(t for t in fields["duration_s"]["anyOf"] if t.get("type") == "number")
    assert (duration["minimum"], duration["maximum"]) == (1.0, 600.0)
    guidance = next(t for t in fields["guidance"]["anyOf"] if t.get("type") == "number")
    assert (guidance["minimum"], guidance["maximum"]) == (0.0, 30.0)
    scheduler = next(t for t in fields["scheduler"]["anyOf"] if t.get("enum"))
    assert scheduler["enum"] == ["euler", "heun"]
    assert all(f.get("description") for f in fields.values())
    with pytest.raises(Exception, match="guidance"):
        generate(rows=[{"prompt": "x", "guidance": 99}])


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
@pytest.mark.parametrize("where", ["s3", "filesystem"])
def test_the_job_s_pages_open_from_the_store_through_the_run_s_artifacts(
    prefect_api: str,
    engine: Engine,
    stave_env: Callable[..., Settings],
    s3_endpoint: str,
    bucket_name: str,
    tmp_path: Path,
    where: str,
) -> None:
    """At the end of a job its listening page and the Data Docs are in the object store, and
    the run's link artifacts open them: presigned links on S3 (every player and image of the
    page signed too), file:// links on the filesystem store (relative links)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from stave.flows.generate import generate

    store = (
        {
            "s3_endpoint": s3_endpoint,
            "bucket": bucket_name,
            "s3_access_key": "test-access",
            "s3_secret_key": "test-secret",
        }
        if where == "s3"
        else {}
    )
    stave_env(**TINY, home=tmp_path / "home", link_expiry_h=2, **store)
    summary = generate(rows=unique_rows(2))
    job = summary["job_id"]
    # The run ended when its last batch was published, its artifacts linking where the pages
    # go; a finishing process puts them there after it.
    (built,) = finishing.wait_for_pages()
    # Both sign the same page, perhaps in different seconds: the same link but for its signature.
    assert built["gallery"].split("?")[0] == summary["pages"]["gallery"].split("?")[0], built
    with get_client(sync_client=True) as client:
        links = {
            # A link artifact's data is markdown: [text](url).
            a.key: re.sub(r"^\[[^]]*\]\((.*)\)$", r"\1", str(a.data))
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[f"gallery-{job}", "data-docs", f"job-pages-{job}"])
                )
            )
        }
    page = links[f"gallery-{job}"]
    assert page == summary["pages"]["gallery"] and links["data-docs"]
    docs = summary["pages"]["data_docs"]  # the key's newest version may be another test's
    assert page in str(links[f"job-pages-{job}"])  # the markdown summary links it too
    if where == "s3":
        assert page.startswith("http://") and "X-Amz-Signature=" in page and "Expires=7200" in page
        assert f"/dev/gallery/{job}/index.html" in page
        html = httpx.get(page, timeout=30).text
        players = re.findall(r'<audio [^>]*src="([^"]+)"', html)
        assert players and all("X-Amz-Signature=" in p for p in players)
        assert httpx.get(docs, timeout=30).status_code == 200
    else:
        assert page.startswith("file://") and page.endswith(f"/dev/gallery/{job}/index.html")
        html = Path(page.removeprefix("file://")).read_text()
        assert re.findall(r'<audio [^>]*src="(audio/[^"]+)"', html)  # relative links
    dom = open_in_chromium(page)
    states = re.findall(r"<(audio|img)[^>]*data-state=\"(\w+)\"", dom)
    assert states and {s for _, s in states} == {"ready"}, states
