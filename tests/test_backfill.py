"""Latent backfills against the real database and store, with a real (tiny) second encoder:
complete, resumable after a kill with no duplicate and no gap, bad items passed over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra import stop
from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.tasks import backfill, vector_index
from stave.tasks.encoders import Encoder, load_encoder
from tests.utils.assets import embedding_counts, make_assets, window, write_tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("encoder") / "tiny.pt", seed=3)


def plain_process(
    engine: Engine, settings: Settings, encoder: Encoder
) -> Callable[..., backfill.BatchResult]:
    store = make_object_store(settings)

    def process(run: backfill.Run, refs: Any, cursor: Any) -> backfill.BatchResult:
        return backfill.process_batch(engine, store, encoder, run, refs, cursor, 4)

    return process


def run_record(engine: Engine, run_id: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM backfill_run WHERE id = :id"), {"id": run_id}).one()


def test_a_new_encoder_version_is_backfilled_resuming_after_a_kill(
    engine: Engine, settings: Settings, tiny: Path, database_url: str, tmp_path: Path
) -> None:
    start, end = window()
    assets = make_assets(engine, make_object_store(settings), 30, start)
    encoder = load_encoder(engine, settings, None, str(tiny))
    assert encoder.version != load_encoder(engine, settings, None, None).version
    scope = backfill.resolve_scope(engine, encoder.version, start, end)

    # A worker process that is killed (SIGKILL) after it has committed a few batches.
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from datetime import datetime
            from stave.infra.db import get_engine
            from stave.infra.objectstore import make_object_store
            from stave.infra.settings import get_settings
            from stave.tasks import backfill
            from stave.tasks.encoders import load_encoder

            settings, engine = get_settings(), get_engine()
            encoder = load_encoder(engine, settings, None, {str(tiny)!r})
            scope = backfill.resolve_scope(
                engine, encoder.version, datetime.fromisoformat({start.isoformat()!r}),
                datetime.fromisoformat({end.isoformat()!r}))
            store = make_object_store(settings)

            def process(run, refs, cursor):
                result = backfill.process_batch(engine, store, encoder, run, refs, cursor, 4)
                time.sleep(0.4)
                return result

            backfill.run_backfill(engine, scope, process, batch_size=4)
            """
        )
    )
    env = {**os.environ, "STAVE_DATABASE_URL": database_url}
    worker = subprocess.Popen([sys.executable, str(script)], env=env, cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                open_run = backfill.find_open_run(conn, scope)
            if open_run is not None and open_run.written >= 8:
                break
            assert worker.poll() is None, "the worker ended before it could be killed"
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    with engine.connect() as conn:
        killed = backfill.find_open_run(conn, scope)
    assert killed is not None and 8 <= killed.written < 30
    before = embedding_counts(engine, assets, encoder.version)
    assert sum(before.values()) == killed.written  # the cursor and the rows agree

    run, progress, status = backfill.run_backfill(
        engine, scope, plain_process(engine, settings, encoder), batch_size=4
    )
    assert status == "completed" and run.resumed and run.id == killed.id
    # Only what was left was encoded: no finished batch ran again.
    assert progress.written == 30 - killed.written and progress.failed == 0
    counts = embedding_counts(engine, assets, encoder.version)
    assert set(counts.values()) == {1} and len(counts) == 30
    record = run_record(engine, run.id)
    assert record.status == "completed" and record.written == 30 and record.finished_at

    # The vectors are the encoder's, unit length; the old version's rows are untouched.
    with engine.connect() as conn:
        vectors = conn.execute(
            text(
                "SELECT embedding FROM latent_embedding WHERE encoder_version = :v "
                "AND asset_id = ANY(:ids)"
            ),
            {"v": encoder.version, "ids": [a.id for a in assets]},
        ).scalars()
        norms = [float(np.linalg.norm(v.to_numpy())) for v in vectors]
    assert np.allclose(norms, 1.0, atol=1e-3)

    # A second run over the same scope has nothing to do.
    again, progress, status = backfill.run_backfill(
        engine, scope, plain_process(engine, settings, encoder), batch_size=4
    )
    assert status == "completed" and not again.resumed and progress.written == 0


def test_missing_corrupted_and_non_audio_objects_are_reported_and_the_rest_go_on(
    engine: Engine, settings: Settings, tiny: Path
) -> None:
    store = make_object_store(settings)
    start, end = window()
    assets = make_assets(engine, store, 9, start)
    store.delete(assets[1].object_key)
    store.put_bytes(assets[4].object_key, b"not the bytes that were recorded")
    # Bytes whose sha256 is the recorded one but that are not audio.
    junk = b"this is not a flac file at all"
    store.put_bytes(assets[7].object_key, junk)
    import hashlib

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audio_asset SET sha256 = :s WHERE id = :id"),
            {"s": hashlib.sha256(junk).hexdigest(), "id": assets[7].id},
        )
    encoder = load_encoder(engine, settings, None, str(tiny))
    scope = backfill.resolve_scope(engine, encoder.version, start, end)
    run, progress, status = backfill.run_backfill(
        engine, scope, plain_process(engine, settings, encoder), batch_size=4
    )
    assert status == "completed" and progress.written == 6 and progress.failed == 3
    reasons = {f["asset_id"]: f["reason"] for f in run_record(engine, run.id).failures}
    assert "missing from the store" in reasons[str(assets[1].id)]
    assert "sha256" in reasons[str(assets[4].id)]
    assert "not readable audio" in reasons[str(assets[7].id)]
    counts = embedding_counts(engine, assets, encoder.version)
    assert [counts[a.id] for a in assets] == [1, 0, 1, 1, 0, 1, 1, 0, 1]
    # `stave embeddings status` shows the run with its failures.
    shown = next(r for r in backfill.coverage(engine)["runs"] if r["id"] == str(run.id))
    assert {f["asset_id"] for f in shown["failures"]} == {str(assets[i].id) for i in (1, 4, 7)}


def test_a_vector_of_the_wrong_dimension_is_refused_for_that_clip_only(
    engine: Engine, settings: Settings, tiny: Path
) -> None:
    start, end = window()
    assets = make_assets(engine, make_object_store(settings), 3, start)
    real = load_encoder(engine, settings, None, str(tiny))

    class Truncating:
        """An encoder whose second vector comes back short (a broken third-party encoder)."""

        version = real.version

        def embed_many(self, clips: Any) -> Any:
            vectors = list(real.embed_many(clips))
            vectors[1] = vectors[1][:100]
            return vectors

    scope = backfill.resolve_scope(engine, real.version, start, end)
    run, progress, _ = backfill.run_backfill(
        engine, scope, plain_process(engine, settings, Truncating()), batch_size=10
    )
    assert progress.written == 2 and progress.failed == 1
    (failure,) = run_record(engine, run.id).failures
    assert failure["asset_id"] == str(assets[1].id) and "shape (100,)" in failure["reason"]


def test_a_limit_stops_the_run_and_the_next_resumes_it(
    engine: Engine, settings: Settings, tiny: Path
) -> None:
    start, end = window()
    assets = make_assets(engine, make_object_store(settings), 10, start)
    encoder = load_encoder(engine, settings, None, str(tiny))
    scope = backfill.resolve_scope(engine, encoder.version, start, end)
    process = plain_process(engine, settings, encoder)
    first, progress, status = backfill.run_backfill(engine, scope, process, 4, limit=6)
    assert status == "stopped" and progress.written == 6
    second, progress, status = backfill.run_backfill(engine, scope, process, 4, limit=4)
    # The limit ends exactly on the last asset: the run knows it is complete.
    assert status == "completed" and second.id == first.id and progress.written == 4
    assert set(embedding_counts(engine, assets, encoder.version).values()) == {1}


def test_a_batch_committed_twice_is_counted_once(
    engine: Engine, settings: Settings, tiny: Path
) -> None:
    start, end = window()
    make_assets(engine, make_object_store(settings), 3, start)
    encoder = load_encoder(engine, settings, None, str(tiny))
    scope = backfill.resolve_scope(engine, encoder.version, start, end)
    run = backfill.open_run(engine, scope)
    refs = backfill.next_page(engine, scope, run, None, 10)
    store = make_object_store(settings)
    first = backfill.process_batch(engine, store, encoder, run, refs, None, 2)
    # The same batch again (a retry after a lost reply): fenced, nothing counted twice.
    retry = backfill.process_batch(engine, store, encoder, run, refs, None, 2)
    assert first.written == 3 and retry.written == 0
    assert run_record(engine, run.id).written == 3
    backfill.finish_run(engine, run.id, "completed")


def test_a_second_runner_of_the_same_backfill_is_refused(
    engine: Engine, settings: Settings, tiny: Path
) -> None:
    start, end = window()
    encoder = load_encoder(engine, settings, None, str(tiny))
    scope = backfill.resolve_scope(engine, encoder.version, start, end)
    with (
        backfill.exclusive(engine, scope),
        pytest.raises(backfill.BackfillBusy, match="already running"),
        backfill.exclusive(engine, scope),
    ):
        pass


def test_scope_errors_are_one_line(engine: Engine, settings: Settings) -> None:
    from datetime import UTC, datetime

    from stave.infra.errors import InvalidInput, NotFound

    with pytest.raises(NotFound, match="no such model version"):
        backfill.resolve_scope(engine, "stave-ae-x", model_version="nope")
    with pytest.raises(InvalidInput, match="must be before"):
        now = datetime.now(UTC)
        backfill.resolve_scope(engine, "stave-ae-x", now, now)
    with pytest.raises(InvalidInput, match="encoder version"):
        backfill.resolve_scope(engine, "bad'version")
    with pytest.raises(InvalidInput, match="no checkpoint for it"):
        load_encoder(engine, settings, "stave-ae-000000000000", None)


def test_the_flow_dry_run_writes_nothing_and_the_run_builds_the_index(
    prefect_api: str, engine: Engine, settings: Settings, tiny: Path, stave_env: Any
) -> None:
    from stave.flows.backfill import backfill_embeddings

    stave_env(backfill_batch_size=4)
    start, end = window()
    assets = make_assets(engine, make_object_store(settings), 7, start)
    encoder = load_encoder(engine, settings, None, str(tiny))
    with engine.connect() as conn:
        runs_before = conn.execute(text("SELECT count(*) FROM backfill_run")).scalar_one()

    plan = backfill_embeddings(
        created_after=start, created_before=end, dry_run=True, checkpoint=str(tiny)
    )
    assert plan["dry_run"] and plan["assets"] == 7 and plan["batches"] == 2
    assert plan["sampled"] == 4 and plan["seconds_per_asset"] > 0 and plan["estimated_seconds"] > 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM backfill_run")).scalar_one() == runs_before
    assert sum(embedding_counts(engine, assets, encoder.version).values()) == 0

    summary = backfill_embeddings(created_after=start, created_before=end, checkpoint=str(tiny))
    assert summary["status"] == "completed" and summary["written"] == 7
    assert summary["batches"] == 2
    with engine.connect() as conn:
        index = vector_index.index_for(conn, encoder.version)
    assert index is not None and index.m == settings.hnsw_m and summary["index"] == index.name

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = {
            a.key
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[f"backfill-summary-{summary['run_id']}"])
                )
            )
        }
    assert keys == {f"backfill-summary-{summary['run_id']}"}


def test_a_conflict_or_a_vanished_asset_takes_the_idempotent_upsert_path(
    engine: Engine, settings: Settings, tiny: Path
) -> None:
    start, end = window()
    store = make_object_store(settings)
    assets = make_assets(engine, store, 5, start)
    encoder = load_encoder(engine, settings, None, str(tiny))
    scope = backfill.resolve_scope(engine, encoder.version, start, end)
    run = backfill.open_run(engine, scope)
    refs = backfill.next_page(engine, scope, run, None, 10)
    # After the page was read: another writer embeds asset 0, and asset 4 is deleted.
    vector = np.zeros(512, dtype=np.float32)
    vector[0] = 1
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO latent_embedding (id, asset_id, encoder_version, embedding) "
                "VALUES (gen_random_uuid(), :a, :v, :e)"
            ),
            {"a": assets[0].id, "v": encoder.version, "e": vector},
        )
        conn.execute(text("DELETE FROM audio_asset WHERE id = :a"), {"a": assets[4].id})
    result = backfill.process_batch(engine, store, encoder, run, refs, None, 2)
    backfill.finish_run(engine, run.id, "completed")
    assert result.path == "upsert" and result.written == 4
    counts = embedding_counts(engine, assets[:4], encoder.version)
    assert set(counts.values()) == {1}
    with engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT embedding FROM latent_embedding "
                "WHERE asset_id = :a AND encoder_version = :v"
            ),
            {"a": assets[0].id, "v": encoder.version},
        ).scalar_one()
    assert stored.to_numpy()[0] != 1.0  # the backfill's vector replaced the other writer's


def test_a_stop_mid_batch_writes_nothing_of_it_and_the_run_resumes(
    engine: Engine, settings: Settings, tiny: Path
) -> None:
    """Ctrl-C or SIGTERM (infra/stop.py) while a batch is read: the batch is abandoned between
    windows (nothing of it written, the cursor stays) and the run is `stopped`; the next
    invocation resumes it and writes each embedding once."""
    start, end = window()
    store = make_object_store(settings)
    assets = make_assets(engine, store, 6, start)
    encoder = load_encoder(engine, settings, None, str(tiny))
    scope = backfill.resolve_scope(engine, encoder.version, start, end)

    def process(run: backfill.Run, refs: Any, cursor: Any) -> backfill.BatchResult:
        if cursor is not None and not run.resumed:
            stop.request(signal.SIGTERM)  # arrives while the second batch is read
        return backfill.process_batch(engine, store, encoder, run, refs, cursor, 2, window=1)

    try:
        first, progress, status = backfill.run_backfill(engine, scope, process, 2)
    finally:
        stop.reset()
    assert status == "stopped" and progress.written == 2
    assert sum(embedding_counts(engine, assets, encoder.version).values()) == 2
    again, progress, status = backfill.run_backfill(engine, scope, process, 2)
    assert status == "completed" and again.id == first.id and again.resumed
    assert progress.written == 4
    assert set(embedding_counts(engine, assets, encoder.version).values()) == {1}
