"""Backups against the real PostgreSQL and both object stores: dump, drill, restore, retention,
corruption and interrupted uploads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from stave.infra.errors import InvalidInput, NotFound, ObjectCorrupted, StorageUnavailable
from stave.infra.objectstore import ObjectStore, make_object_store
from stave.infra.settings import Settings
from stave.tasks import backup
from tests.test_cli import assert_one_line_error, stave
from tests.utils.flaky_proxy import FlakyProxy

pytestmark = pytest.mark.integration


def day(n: int) -> datetime:
    return datetime(2026, 11, 23, 2, 0, tzinfo=UTC) - timedelta(days=n)


def test_retention_keeps_newest_per_day_week_month_and_the_newest_verified() -> None:
    ids = [uuid.UUID(int=i + 1) for i in range(120)]
    # One backup a night for 120 nights; only an old one (night 100) was ever verified.
    backups = [(ids[n], day(n), day(n) if n == 100 else None) for n in range(120)]
    keep = backup.plan_retention(backups, daily=7, weekly=4, monthly=3)
    kept_days = sorted(n for n in range(120) if ids[n] in keep)
    assert kept_days[:7] == list(range(7))  # the last seven nights
    assert 100 in kept_days  # the newest verified one, however old
    # Newest per ISO week (Monday-start) and per month beyond the dailies:
    weeks = {tuple(day(n).isocalendar())[:2] for n in kept_days if n != 100}
    months = {(day(n).year, day(n).month) for n in kept_days if n != 100}
    assert len(weeks) >= 4 and len(months) == 3
    assert len(keep) <= 7 + 4 + 3 + 1
    # A second backup on the same night is not a second daily.
    twice = [(ids[0], day(0), None), (ids[1], day(0) - timedelta(hours=1), None)]
    assert backup.plan_retention(twice, daily=7, weekly=0, monthly=0) == {ids[0]}


def other_db_url(database_url: str, name: str) -> str:
    return str(make_url(database_url).set(database=name))


def test_other_sessions_temporary_tables_are_not_in_the_manifest(
    engine: Engine, database_url: str, settings: Settings
) -> None:
    """A backfill's staging table (a temporary table in a pooled session) is not dumped, so
    the manifest must not list it, or every drill would fail while a backfill runs."""
    store = make_object_store(settings)
    with engine.connect() as holder:
        holder.execute(text("CREATE TEMP TABLE tmp_held (x int)"))
        holder.commit()
        result = backup.run_backup(engine, store, url=database_url, env_name="dev")
        assert not [t for t in result.manifest["tables"] if "tmp_held" in t]
        backup.drill(engine, store, backup.get_backup(engine, str(result.id)), url=database_url)


def test_backup_streams_a_dump_that_the_drill_restores(
    engine: Engine, database_url: str, settings: Settings
) -> None:
    store = make_object_store(settings)
    streamed: list[int] = []
    result = backup.run_backup(
        engine, store, url=database_url, env_name="dev", progress=streamed.append
    )
    assert result.object_key.startswith("dev/backups/dump/") and result.bytes > 0
    assert sum(streamed) == result.bytes  # the progress bar saw every byte
    assert store.stat(result.object_key).sha256 == result.sha256
    manifest = result.manifest
    assert manifest["server_version"].startswith("16.")
    assert "public.generation_task" in manifest["tables"]
    assert store.exists(backup.manifest_key(result.object_key))
    record = backup.get_backup(engine, str(result.id))
    assert record["status"] == "succeeded" and record["verified_at"] is None

    report = backup.drill(engine, store, record, url=database_url)
    assert report["tables"] == len(manifest["tables"])
    with engine.connect() as conn:
        verified = conn.execute(
            text("SELECT verified_at FROM backup_record WHERE id = :id"), {"id": result.id}
        ).scalar_one()
        scratch = conn.execute(
            text("SELECT count(*) FROM pg_database WHERE datname LIKE 'stave_drill_%'")
        ).scalar_one()
    assert verified is not None and scratch == 0

    # Restore into a new database; refuse it a second time without --force.
    target = f"restored_{uuid.uuid4().hex[:8]}"
    try:
        counts = backup.restore(store, record, url=database_url, database=target, force=False)
        assert counts == manifest["tables"]
        with pytest.raises(InvalidInput, match="is not empty"):
            backup.restore(store, record, url=database_url, database=target, force=False)
        again = backup.restore(store, record, url=database_url, database=target, force=True)
        assert again == manifest["tables"]
        restored = create_engine(other_db_url(database_url, target), poolclass=NullPool)
        with restored.connect() as conn:
            ext = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
            assert ext.scalar_one()
        restored.dispose()
    finally:
        backup.drop_database(database_url, target)


def test_a_corrupted_backup_is_refused_and_never_restored(
    engine: Engine, database_url: str, settings: Settings
) -> None:
    store = make_object_store(settings)
    result = backup.run_backup(engine, store, url=database_url, env_name="dev")
    path = settings.object_root / settings.bucket / result.object_key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    record = backup.get_backup(engine, str(result.id))
    target = f"never_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ObjectCorrupted, match="is corrupted"):
        backup.restore(store, record, url=database_url, database=target, force=False)
    with pytest.raises(ObjectCorrupted):
        backup.drill(engine, store, record, url=database_url)
    with engine.connect() as conn:
        made = conn.execute(
            text(
                "SELECT count(*) FROM pg_database "
                "WHERE datname = :d OR datname LIKE 'stave_drill_%'"
            ),
            {"d": target},
        ).scalar_one()
    assert made == 0


def test_an_interrupted_upload_leaves_a_failed_record_and_no_object(
    engine: Engine,
    database_url: str,
    s3_endpoint: str,
    bucket_name: str,
    stave_env: Callable[..., Settings],
) -> None:
    with FlakyProxy(s3_endpoint, failures=10**9) as proxy:
        settings = stave_env(
            s3_endpoint=proxy.endpoint,
            s3_access_key="test-access",
            s3_secret_key="test-secret",
            s3_max_retries=0,
            bucket=bucket_name,
        )
        store = make_object_store(settings)
        with pytest.raises(StorageUnavailable):
            backup.run_backup(engine, store, url=database_url, env_name="dev")
        proxy.failures_left = 0
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT status, error, object_key FROM backup_record "
                    "ORDER BY created_at DESC LIMIT 1"
                )
            ).one()
        assert row.status == "failed" and row.error
        assert not store.exists(row.object_key)
        assert list(store.list("dev/backups/")) == []


def test_backups_left_running_by_a_killed_process_are_marked_failed(
    engine: Engine, settings: Settings
) -> None:
    key = f"dev/backups/dump/2026/01/01/{uuid.uuid4()}.dump"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO backup_record (id, env, kind, status, object_key, created_at) "
                "VALUES (:id, 'dev', 'dump', 'running', :key, now() - interval '2 days')"
            ),
            {"id": uuid.uuid4(), "key": key},
        )
    store = make_object_store(settings)
    store.put_bytes(key, b"partial")
    assert backup.mark_interrupted(engine, store, older_than=timedelta(hours=12)) == 1
    assert not store.exists(key)


def age_manifest(store: ObjectStore, object_key: str, **fields: str) -> None:
    """Rewrite fields of a backup's manifest in the store (the catalogue retention reads)."""
    key = object_key + ".manifest.json"
    manifest = json.loads(store.get_bytes(key))
    manifest.update(fields)
    store.put_bytes(key, json.dumps(manifest).encode(), content_type="application/json")


def test_retention_deletes_objects_and_records_but_keeps_the_newest_verified(
    engine: Engine, database_url: str, settings: Settings
) -> None:
    store = make_object_store(settings)
    env_name = f"ret{uuid.uuid4().hex[:6]}"
    made = [backup.run_backup(engine, store, url=database_url, env_name=env_name) for _ in range(3)]
    now = datetime.now(UTC)
    for age, result in zip((40, 20, 0), made, strict=True):
        age_manifest(store, result.object_key, started_at=(now - timedelta(days=age)).isoformat())
    age_manifest(store, made[0].object_key, verified_at=now.isoformat())
    removed = backup.apply_retention(engine, store, env_name=env_name, daily=1, weekly=0, monthly=0)
    assert removed == [str(made[1].id)]
    assert not store.exists(made[1].object_key)
    assert not store.exists(made[1].object_key + ".manifest.json")
    assert store.exists(made[0].object_key) and store.exists(made[2].object_key)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                text("SELECT id, verified_at FROM backup_record WHERE env = :e"), {"e": env_name}
            ).all()
        )
    # The cache follows the store: the removed one's record is gone, the verified mark came in.
    assert set(rows) == {made[0].id, made[2].id} and rows[made[0].id] is not None


def test_the_store_is_the_catalogue_and_the_records_are_rebuilt_from_it(
    engine: Engine, database_url: str, settings: Settings
) -> None:
    store = make_object_store(settings)
    env_name = f"cat{uuid.uuid4().hex[:6]}"
    made = backup.run_backup(engine, store, url=database_url, env_name=env_name)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM backup_record WHERE env = :e"), {"e": env_name})
    found = backup.find_backup(store, env_name, None, kind="dump")
    assert found.id == made.id and found.sha256 == made.sha256
    assert backup.sync_records(engine, store, env_name) == {"added": 1, "removed": 0}
    assert backup.sync_records(engine, store, env_name) == {"added": 0, "removed": 0}
    store.delete(made.object_key + ".manifest.json")
    assert backup.stored_backups(store, env_name) == []
    assert backup.sync_records(engine, store, env_name) == {"added": 0, "removed": 1}
    with pytest.raises(NotFound, match="no dump backup"):
        backup.find_backup(store, env_name, None, kind="dump")


def test_the_nightly_flow_dumps_drills_and_reports(
    prefect_api: str, engine: Engine, database_url: str, settings: Settings
) -> None:
    from stave.flows.backup import nightly_backup

    summary = nightly_backup()
    # The session's database does not archive WAL: no base backup, said so, and no failure.
    assert summary["base_backup"] is None and summary["base_retention"] is None
    assert summary["drill"]["tables"] == summary["backup"]["tables"]
    store = make_object_store(settings)
    found = backup.find_backup(store, settings.env, summary["backup"]["id"], kind="dump")
    assert found.verified_at is not None
    with engine.connect() as conn:
        verified = conn.execute(
            text("SELECT verified_at FROM backup_record WHERE id = :id"), {"id": found.id}
        ).scalar_one()
    assert verified is not None


def test_cli_backup_run_verify_list_and_restore(database_url: str, tmp_path: Path) -> None:
    env = {"STAVE_HOME": str(tmp_path / "home"), "STAVE_DATABASE_URL": database_url}
    ran = stave("backup", "run", "--json", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    import json

    made = json.loads(ran.stdout)
    assert made["drill"]["rows"] == sum(made["tables"].values())
    checked = stave("backup", "verify", made["id"], cwd=tmp_path, env=env)
    assert checked.returncode == 0 and "match the manifest" in checked.stdout
    listed = stave("backup", "list", cwd=tmp_path, env=env)
    assert made["id"] in listed.stdout and "verified" in listed.stdout
    only = stave("backup", "verify", made["id"], "--store-only", cwd=tmp_path, env=env)
    assert only.returncode == 0 and "sha256 matches" in only.stdout
    runs = stave("backup", "list", "--runs", cwd=tmp_path, env=env)
    assert made["id"] in runs.stdout and "succeeded" in runs.stdout
    refused = stave("backup", "restore", made["id"], "--into", "stave_test", cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert "is not empty" in assert_one_line_error(refused)
    missing = stave("backup", "verify", str(uuid.uuid4()), cwd=tmp_path, env=env)
    assert "no backup" in assert_one_line_error(missing)


def test_a_failed_backup_fails_the_flow_run_with_the_cause(
    prefect_api: str,
    database_url: str,
    s3_endpoint: str,
    bucket_name: str,
    stave_env: Callable[..., Settings],
) -> None:
    from stave.flows.backup import nightly_backup

    with FlakyProxy(s3_endpoint, failures=10**9) as proxy:
        stave_env(
            s3_endpoint=proxy.endpoint,
            s3_access_key="test-access",
            s3_secret_key="test-secret",
            s3_max_retries=0,
            bucket=bucket_name,
        )
        state = nightly_backup(return_state=True)
    assert state.is_failed()
    assert "503" in (state.message or "") or "storage" in (state.message or "").lower()
