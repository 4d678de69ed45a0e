"""Six-month archival against the real database and store: rows made by the real flow,
back-dated, leave the hot tables for Parquet, are queried there and restored; a crash between
writing and deleting, or a failed delete, loses nothing and duplicates nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.models import archive_policies
from stave.tasks import archive

pytestmark = pytest.mark.integration

TINY = {"default_duration_s": 1, "default_steps": 2, "batch_size": 4}


def old_job(engine: Engine, stave_env: Callable[..., Settings], n: int = 3, days: int = 400) -> Any:
    """A job made by the real generation flow, then back-dated `days` (with its tasks, events,
    assets, embeddings and prompt revisions)."""
    from stave.flows.generate import generate

    stave_env(**TINY)
    tag = uuid.uuid4().hex[:8]
    summary = generate(
        rows=[{"prompt": f"warm organ chords {tag} {i}", "seed": i} for i in range(n)]
    )
    assert summary["published"] == n
    job = uuid.UUID(summary["job_id"])
    shift = {"d": timedelta(days=days), "j": job}
    with engine.begin() as conn:
        tasks = "SELECT id FROM generation_task WHERE job_id = :j"
        assets = f"SELECT id FROM audio_asset WHERE task_id IN ({tasks})"
        for sql in (
            "UPDATE generation_job SET created_at = created_at - :d WHERE id = :j",
            f"UPDATE generation_task SET created_at = created_at - :d WHERE id IN ({tasks})",
            f"UPDATE task_event SET created_at = created_at - :d WHERE task_id IN ({tasks})",
            f"UPDATE audio_asset SET created_at = created_at - :d WHERE id IN ({assets})",
            "UPDATE latent_embedding SET created_at = created_at - :d "
            f"WHERE asset_id IN ({assets})",
            "UPDATE prompt_revision SET created_at = created_at - :d WHERE id IN "
            "(SELECT prompt_revision_id FROM generation_task WHERE job_id = :j)",
            "UPDATE validation_run SET created_at = created_at - :d WHERE job_id = :j",
        ):
            conn.execute(text(sql), shift)
    return job


def snapshot(engine: Engine, job: uuid.UUID) -> dict[str, Any]:
    """Everything about a job's rows, to compare before archiving and after restoring."""
    with engine.connect() as conn:
        tasks = conn.execute(
            text(
                "SELECT id, prompt, parameters, provenance, created_at FROM generation_task "
                "WHERE job_id = :j ORDER BY id"
            ),
            {"j": job},
        ).all()
        ids = [t.id for t in tasks]
        events = conn.execute(
            text(
                "SELECT id, to_status, detail FROM task_event WHERE task_id = ANY(:i) ORDER BY id"
            ),
            {"i": ids},
        ).all()
        assets = conn.execute(
            text("SELECT id, sha256, bytes FROM audio_asset WHERE task_id = ANY(:i) ORDER BY id"),
            {"i": ids},
        ).all()
        vectors = conn.execute(
            text(
                "SELECT e.id, e.embedding FROM latent_embedding e JOIN audio_asset a "
                "ON a.id = e.asset_id WHERE a.task_id = ANY(:i) ORDER BY e.id"
            ),
            {"i": ids},
        ).all()
    return {
        "tasks": [tuple(t) for t in tasks],
        "events": [tuple(e) for e in events],
        "assets": [tuple(a) for a in assets],
        "vectors": [
            (
                v.id,
                np.asarray(
                    v.embedding.to_numpy() if hasattr(v.embedding, "to_numpy") else v.embedding
                ),
            )
            for v in vectors
        ],
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for part in ("tasks", "events", "assets"):
        assert a[part] == b[part], part
    assert len(a["vectors"]) == len(b["vectors"])
    for (i, v), (j, w) in zip(a["vectors"], b["vectors"], strict=True):
        assert i == j and np.array_equal(v, w)


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "work"


def test_old_records_leave_for_parquet_are_queried_there_and_restored_once(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings], tmp_dir: Path
) -> None:
    job = old_job(engine, stave_env)
    before = snapshot(engine, job)
    assert len(before["tasks"]) == 3 and len(before["vectors"]) == 3
    settings = stave_env()
    store = make_object_store(settings)

    result = archive.run_archive(engine, store, tmp_dir, env_name="dev")
    assert result.rows["generation_task"] >= 3 and result.rows["latent_embedding"] >= 3
    assert_same(snapshot(engine, job), {"tasks": [], "events": [], "assets": [], "vectors": []})
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM generation_job WHERE id = :j"), {"j": job}
            ).scalar()
            == 0
        )

    # The audio moved under dev/archive/, verified; the hot object is gone.
    for asset_id, sha, _ in before["assets"]:
        assert not store.exists(f"dev/audio/{asset_id}.flac")
        assert store.verify(f"dev/archive/audio/{asset_id}.flac", expected_sha256=sha)

    # Queried in place, without restoring: vectors and JSON come back exactly.
    tasks = archive.query(engine, store, "generation_task", tmp_dir, where=f"job_id = '{job}'")
    assert sorted(tasks.column("id").to_pylist()) == sorted(str(t[0]) for t in before["tasks"])
    vectors = archive.query(engine, store, "latent_embedding", tmp_dir)
    assert vectors.schema.field("embedding").type == pa.list_(pa.float32(), 512)
    assert tasks.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    by_id = {r["id"]: r["embedding"] for r in vectors.to_pylist()}
    for vector_id, vector in before["vectors"]:
        assert np.array_equal(np.asarray(by_id[str(vector_id)], dtype=np.float32), vector)

    # Restored: the same rows, byte for byte; a second restore adds nothing.
    year, month = before["tasks"][0][4].year, before["tasks"][0][4].month
    added = archive.restore(engine, store, "generation_task", year, month, tmp_dir, env_name="dev")
    assert added["generation_task"] >= 3 and added.get("generation_job", 0) >= 1
    restored = snapshot(engine, job)
    assert restored["tasks"] == before["tasks"] and restored["events"] == before["events"]
    assert [a[0] for a in restored["assets"]] == [a[0] for a in before["assets"]]
    for (i, v), (j, w) in zip(restored["vectors"], before["vectors"], strict=True):
        assert i == j and np.array_equal(v, w)
    again = archive.restore(engine, store, "generation_task", year, month, tmp_dir, env_name="dev")
    assert sum(again.values()) == 0
    # The restored asset points at the archived audio, which still verifies.
    with engine.connect() as conn:
        key, sha = conn.execute(
            text("SELECT object_key, sha256 FROM audio_asset WHERE id = :a"),
            {"a": before["assets"][0][0]},
        ).one()
    assert key.startswith("dev/archive/audio/") and store.verify(key, expected_sha256=sha)


def test_a_crash_between_write_and_delete_loses_and_duplicates_nothing(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings], tmp_dir: Path
) -> None:
    job = old_job(engine, stave_env, n=2)
    before = snapshot(engine, job)
    store = make_object_store(stave_env())

    def crash_after_write(policy: Any, group: archive.Group, context: Any) -> Any:
        archive.write(engine, store, policy, group, tmp_dir, source=context.source)
        archive.verify(store, group)
        raise SystemExit("killed after writing, before deleting")

    with pytest.raises(SystemExit):
        archive.run_archive(engine, store, tmp_dir, env_name="dev", process=crash_after_write)
    assert_same(snapshot(engine, job), before)  # nothing deleted
    with engine.connect() as conn:
        writing = (
            conn.execute(text("SELECT object_key FROM archive_batch WHERE status = 'writing'"))
            .scalars()
            .all()
        )
    assert writing and all(store.exists(k) for k in writing)

    result = archive.run_archive(
        engine, store, tmp_dir, env_name="dev"
    )  # the rerun cleans up and redoes it
    assert result.cleaned == len(writing)
    assert not any(store.exists(k) for k in writing)
    assert snapshot(engine, job)["tasks"] == []
    ids = archive.query(engine, store, "generation_task", tmp_dir).column("id").to_pylist()
    mine = [i for i in ids if i in {str(t[0]) for t in before["tasks"]}]
    assert sorted(mine) == sorted(str(t[0]) for t in before["tasks"])  # each exactly once


@pytest.mark.parametrize("fast", [True, False], ids=["triggers-off", "triggers-on"])
def test_a_failed_delete_keeps_the_rows_and_the_rerun_takes_the_new_ones_too(
    prefect_api: str,
    engine: Engine,
    stave_env: Callable[..., Settings],
    tmp_dir: Path,
    fast: bool,
) -> None:
    job = old_job(engine, stave_env, n=2)
    store = make_object_store(stave_env())
    first_task = snapshot(engine, job)["tasks"][0][0]

    def event_arrives_meanwhile(policy: Any, group: archive.Group, context: Any) -> Any:
        archive.write(engine, store, policy, group, tmp_dir, source=context.source)
        archive.verify(store, group)
        if policy.table == "generation_task":
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO task_event (task_id, to_status, detail, created_at) "
                        "VALUES (:t, 'published', '{\"late\": true}', now() - interval '400 days')"
                    ),
                    {"t": first_task},
                )
        closed = policy.table == "generation_task"  # the only root whose group is closed
        archive.commit(engine, store, policy, group, fast=fast if closed else None)
        return group.written

    with pytest.raises(archive.ArchiveConflict, match="nothing deleted"):
        archive.run_archive(engine, store, tmp_dir, env_name="dev", process=event_arrives_meanwhile)
    assert len(snapshot(engine, job)["tasks"]) == 2  # the delete failed as a whole

    archive.run_archive(engine, store, tmp_dir, env_name="dev")
    assert snapshot(engine, job)["tasks"] == []
    events = archive.query(engine, store, "task_event", tmp_dir, where=f"task_id = '{first_task}'")
    assert any('"late": true' in d for d in events.column("detail").to_pylist())


def test_nothing_old_enough_writes_nothing(
    engine: Engine, settings: Settings, tmp_dir: Path
) -> None:
    store = make_object_store(settings)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM archive_batch")).scalar_one()
    far_past = datetime(1990, 1, 1, tzinfo=UTC)
    assert all(p.rows == 0 for p in archive.plan(engine, None, now=far_past))
    result = archive.run_archive(engine, store, tmp_dir, env_name="dev", now=far_past)
    assert result.groups == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM archive_batch")).scalar_one() == before


def test_where_clauses_are_parsed_or_refused_in_one_line() -> None:

    from stave.infra.errors import InvalidInput

    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("attempts", pa.int32()),
            ("created_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    assert archive.parse_where("user_id = 'ana' and attempts >= 2", schema) is not None
    assert archive.parse_where("created_at < 2026-01-01", schema) is not None
    with pytest.raises(InvalidInput, match="no column 'nope'"):
        archive.parse_where("nope = 1", schema)
    with pytest.raises(InvalidInput, match="is not a value for attempts"):
        archive.parse_where("attempts = many", schema)
    with pytest.raises(InvalidInput, match="cannot read"):
        archive.parse_where("user_id ~ 'a'", schema)


def test_the_archive_commands(database_url: str, settings: Settings, tmp_path: Path) -> None:
    from tests.test_cli import assert_one_line_error, stave

    env = {"STAVE_HOME": str(settings.home), "STAVE_DATABASE_URL": database_url}
    nothing = stave("archive", "run", "--older-than", "36500d", cwd=tmp_path, env=env)
    assert nothing.returncode == 0 and "nothing old enough to archive" in nothing.stdout
    planned = stave(
        "archive", "run", "--dry-run", "--older-than", "0d", "--json", cwd=tmp_path, env=env
    )
    assert planned.returncode == 0 and '"dry_run": true' in planned.stdout
    listed = stave("archive", "list", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and listed.stdout.strip().startswith("[")
    for args, expected in (
        (("archive", "restore", "--table", "generation_task", "--month", "2026-13"), "YYYY-MM"),
        (
            ("archive", "restore", "--table", "style_template", "--month", "2026-01"),
            "not an archived table",
        ),
        (("archive", "query", "--table", "nope"), "not archived by any policy"),
        (("archive", "run", "--older-than", "soon"), "give days"),
    ):
        result = stave(*args, cwd=tmp_path, env=env)
        assert result.returncode == 1, args
        assert expected in assert_one_line_error(result)


def test_the_weekly_flow_archives_with_progress_and_summary_artifacts(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from stave.flows.archive import archive_old_records

    job = old_job(engine, stave_env, n=2)
    plan = archive_old_records(dry_run=True)
    assert plan["dry_run"] and plan["rows"] >= 2
    assert len(snapshot(engine, job)["tasks"]) == 2  # a dry run moves nothing

    summary = archive_old_records()
    assert summary["rows"]["generation_task"] >= 2 and summary["groups"] >= 1
    assert snapshot(engine, job)["tasks"] == []
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["archive-summary"]))
        )
    assert found and any("generation_task" in str(a.data) for a in found)


def orphans(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM task_event e WHERE NOT EXISTS "
                    "(SELECT 1 FROM generation_task t WHERE t.id = e.task_id)) + "
                    "(SELECT count(*) FROM audio_asset a WHERE a.task_id IS NOT NULL AND NOT "
                    "EXISTS (SELECT 1 FROM generation_task t WHERE t.id = a.task_id)) + "
                    "(SELECT count(*) FROM latent_embedding l WHERE NOT EXISTS "
                    "(SELECT 1 FROM audio_asset a WHERE a.id = l.asset_id))"
                )
            ).scalar_one()
        )


def test_with_the_triggers_off_a_row_committed_while_the_delete_waits_is_counted_not_orphaned(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings], tmp_dir: Path
) -> None:
    """The race the triggers would have caught: another transaction has inserted an event for
    an archived task (holding the task's key-share lock) and commits while the archive's
    delete waits for it. The delete must see that event and give up, not leave it orphaned."""
    import threading
    import time

    job = old_job(engine, stave_env, n=2)
    store = make_object_store(stave_env())
    task = snapshot(engine, job)["tasks"][0][0]
    outcome: list[BaseException | None] = []

    def racing(policy: Any, group: archive.Group, context: Any) -> Any:
        archive.write(engine, store, policy, group, tmp_dir, source=context.source)
        archive.verify(store, group)
        if policy.table != "generation_task":
            archive.commit(engine, store, policy, group)
            return group.written
        other = engine.connect()
        other.execute(
            text(
                "INSERT INTO task_event (task_id, to_status, detail, created_at) "
                "VALUES (:t, 'published', '{\"racing\": true}', now() - interval '400 days')"
            ),
            {"t": task},
        )  # not committed yet: it holds the key-share lock on the task

        def delete() -> None:
            try:
                archive.commit(engine, store, policy, group, fast=True)
                outcome.append(None)
            except BaseException as err:
                outcome.append(err)

        deleting = threading.Thread(target=delete)
        deleting.start()
        time.sleep(1.0)
        assert deleting.is_alive(), "the delete should wait for the other transaction"
        other.commit()
        other.close()
        deleting.join(30)
        assert outcome and isinstance(outcome[0], archive.ArchiveConflict), outcome
        raise outcome[0]

    with pytest.raises(archive.ArchiveConflict, match="task_event"):
        archive.run_archive(engine, store, tmp_dir, env_name="dev", process=racing)
    assert orphans(engine) == 0
    assert len(snapshot(engine, job)["tasks"]) == 2

    archive.run_archive(
        engine, store, tmp_dir, env_name="dev"
    )  # the rerun takes the racing event too
    assert snapshot(engine, job)["tasks"] == [] and orphans(engine) == 0
    events = archive.query(engine, store, "task_event", tmp_dir, where=f"task_id = '{task}'")
    assert any('"racing": true' in d for d in events.column("detail").to_pylist())


def test_rows_with_one_timestamp_split_into_groups_by_id_each_archived_once(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings], tmp_dir: Path
) -> None:
    """A submission's tasks share their created_at: groups are cut by (created_at, id), so a
    batch smaller than the submission still bounds the group, and no row is skipped."""
    job = old_job(engine, stave_env, n=3)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE generation_task SET created_at = "
                "(SELECT min(created_at) FROM generation_task WHERE job_id = :j) WHERE job_id = :j"
            ),
            {"j": job},
        )
    tasks = {str(t[0]) for t in snapshot(engine, job)["tasks"]}
    store = make_object_store(stave_env())
    result = archive.run_archive(engine, store, tmp_dir, env_name="dev", batch_size=2)
    assert result.groups >= 2 + 1  # two groups of tasks (2 + 1), then the job
    assert snapshot(engine, job)["tasks"] == []
    ids = archive.query(engine, store, "generation_task", tmp_dir).column("id").to_pylist()
    assert sorted(i for i in ids if i in tasks) == sorted(tasks)


def test_fast_delete_needs_a_closed_group_and_the_parameter_grant(engine: Engine) -> None:
    policies = {p.table: p for p in archive_policies()}
    with engine.connect() as conn:
        # A superuser may; a task's group is closed (only its travellers refer to it).
        assert archive.fast_delete_allowed(conn, policies["generation_task"])
        # Jobs are referred to by hot tables (tasks, validation runs): never with triggers off.
        assert not archive.fast_delete_allowed(conn, policies["generation_job"])
        conn.execute(text("SET LOCAL ROLE stave_reporting"))  # no grant of the parameter
        assert not archive.fast_delete_allowed(conn, policies["generation_task"])
        conn.rollback()
        # The app role may since migration 0011 (its bulk submissions skip the triggers too).
        conn.execute(text("SET LOCAL ROLE stave_app"))
        assert archive.fast_delete_allowed(conn, policies["generation_task"])
        conn.rollback()
        # A login in stave_archiver may (migration 0007 granted the parameter to that role).
        conn.execute(text("CREATE ROLE stave_test_archive_worker IN ROLE stave_archiver"))
        conn.execute(text("SET LOCAL ROLE stave_test_archive_worker"))
        assert archive.fast_delete_allowed(conn, policies["generation_task"])
        conn.rollback()


def test_the_checksum_ignores_order_and_sees_any_change() -> None:

    keys = [str(uuid.uuid4()) for _ in range(1000)] + ["7", "a-much-longer-key-than-a-uuid-is-1"]
    digest = archive.checksum(keys)
    assert archive.checksum(list(reversed(keys))) == digest
    assert archive.checksum(pa.chunked_array([pa.array(keys[:10]), pa.array(keys[10:])])) == digest
    assert archive.checksum(pa.array(keys).slice(0, len(keys))) == digest
    assert archive.checksum(keys[:-1]) != digest
    assert archive.checksum([*keys[:-1], keys[-1][:-1] + "2"]) != digest
    assert archive.checksum([*keys, keys[0]]) != digest
    assert archive.checksum([]) == archive.checksum(pa.chunked_array([], pa.string()))
    # Added a batch at a time, as the writers do, in any order of batches: the same digest.
    pieces = archive.KeyDigest()
    for start in (500, 0, 1000):
        pieces.add(pa.array(keys[start : start + 500]))
    assert pieces.count == len(keys) and pieces.hexdigest() == digest
    # Unchanged scheme: files committed before the digest was incremental still verify.
    assert archive.checksum(["a", "b"]) == (
        "6d420c66e9afdc3c637efb5f1e484b2c3323a949d2876877505f81bfe9aca0ff"
    )


def test_a_long_writer_of_the_travellers_makes_the_delete_give_up_not_wait(
    prefect_api: str,
    engine: Engine,
    stave_env: Callable[..., Settings],
    tmp_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writers queue behind a waiting LOCK TABLE, so the delete waits only LOCK_WAIT_S for a
    transaction that holds a traveller table, then gives up with nothing deleted; and a
    restore is refused while a run holds the archive."""
    monkeypatch.setattr(archive.steps, "LOCK_WAIT_S", 1)
    job = old_job(engine, stave_env, n=1)
    store = make_object_store(stave_env())
    task = snapshot(engine, job)["tasks"][0][0]
    writer = engine.connect()
    writer.execute(
        text(
            "INSERT INTO task_event (task_id, to_status, detail, created_at) "
            "VALUES (:t, 'published', '{}', now())"
        ),
        {"t": task},
    )
    try:
        with pytest.raises(archive.ArchiveBusy, match="stayed busy"):
            archive.run_archive(engine, store, tmp_dir, env_name="dev")
        assert len(snapshot(engine, job)["tasks"]) == 1
    finally:
        writer.rollback()
        writer.close()

    archive.run_archive(engine, store, tmp_dir, env_name="dev")
    assert snapshot(engine, job)["tasks"] == [] and orphans(engine) == 0
    month = datetime.fromisoformat(archive.list_batches(engine, "generation_task")[-1]["time_from"])
    with archive.exclusive(engine), pytest.raises(archive.ArchiveBusy, match="in progress"):
        archive.restore(
            engine, store, "generation_task", month.year, month.month, tmp_dir, env_name="dev"
        )


def test_an_unreachable_server_is_one_line_with_nothing_deleted() -> None:
    from sqlalchemy import create_engine

    from stave.infra.errors import DatabaseUnavailable

    nowhere = create_engine("postgresql+psycopg://stave:secret@127.0.0.1:1/stave")
    with pytest.raises(DatabaseUnavailable) as caught:
        archive.arrow_source(nowhere)
    message = str(caught.value)
    assert "\n" not in message and "port 1 failed" in message and "nothing was deleted" in message
    assert "secret" not in message
