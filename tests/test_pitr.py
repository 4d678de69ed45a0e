"""WAL archiving and the chain recovery needs, on the real filesystem store and the session's
PostgreSQL: the archive command's contract with the server, gaps and corruption found before
anything is replayed, and WAL retention bounded by the oldest kept base backup.
(The whole loss-and-recovery drill is tests/test_disaster.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from stave.infra import wal
from stave.infra.errors import ConfigError, ObjectCorrupted
from stave.infra.objectstore import make_object_store
from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.filesystem import FilesystemStore
from stave.infra.settings import Settings
from stave.models.base import utcnow
from stave.tasks import backup, pitr, walchain

SYSTEM = "7000000000000000001"


def segment(tmp_path: Path, name: str, fill: bytes = b"\0") -> Path:
    path = tmp_path / name
    path.write_bytes(name.encode() + fill * 4096)
    return path


def archive(store: ObjectStore, env_name: str, tmp_path: Path, *names: str) -> None:
    for name in names:
        wal.push(store, env_name, SYSTEM, segment(tmp_path, name), name)


def names(timeline: int, first: int, last: int) -> list[str]:
    return [wal.segment_name(timeline, n) for n in range(first, last + 1)]


def test_archive_command_is_idempotent_and_refuses_other_bytes(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects", "stave")
    name = names(1, 3, 3)[0]
    path = segment(tmp_path, name)
    key = wal.push(store, "dev", SYSTEM, path, name)
    assert key == f"dev/backups/wal/{SYSTEM}/{name.lower()}.zz"
    assert wal.push(store, "dev", SYSTEM, path, name) == key  # a retry after a crash: success
    assert wal.fetch(store, key) == path.read_bytes()
    with pytest.raises(ObjectCorrupted, match="already in the store with other bytes"):
        wal.push(store, "dev", SYSTEM, segment(tmp_path, name, b"\1"), name)


def test_segments_are_zstd_raw_when_incompressible_and_earlier_zlib_ones_still_read(
    tmp_path: Path,
) -> None:
    store = FilesystemStore(tmp_path / "objects", "stave")
    first, second, third = names(1, 1, 3)
    key = wal.push(store, "dev", SYSTEM, segment(tmp_path, first), first)
    assert (store.base / key).read_bytes()[:1] == wal.ZSTD
    noise = tmp_path / second
    noise.write_bytes(os.urandom(1 << 20))  # would not shrink: stored as it is
    key = wal.push(store, "dev", SYSTEM, noise, second)
    assert (store.base / key).read_bytes()[:1] == wal.RAW
    assert wal.fetch(store, key) == noise.read_bytes()

    # A segment an earlier release archived with zlib reads back, and the same segment pushed
    # again now (a retry after a crash, across the upgrade) is success, not "other bytes".
    old = segment(tmp_path, third)
    key = wal.wal_key("dev", SYSTEM, third)
    store.put_bytes(key, wal.ZLIB + zlib.compress(old.read_bytes(), 1))
    assert wal.fetch(store, key) == old.read_bytes()
    assert wal.push(store, "dev", SYSTEM, old, third) == key

    # A stream that does not decompress, though its sha256 record matches: named.
    store.put_bytes(key, wal.ZSTD + b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(ObjectCorrupted, match=f"{key} does not decompress"):
        wal.fetch(store, key)


def test_archive_command_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    """What PostgreSQL sees: exit 1 and one line on stderr when the store cannot take it."""
    settings = Settings(home=tmp_path / "home", s3_endpoint="127.0.0.1:9", s3_max_retries=0)
    setup = wal.write_target(settings, tmp_path / "target.json")
    assert (tmp_path / "target.json").stat().st_mode & 0o777 == 0o600
    assert "archive_timeout = 30" in setup.conf_lines()
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes((123).to_bytes(8, "little") + b"\0" * 100)
    name = names(1, 1, 1)[0]
    segment(tmp_path, name)
    run = subprocess.run(
        [sys.executable, "-m", "stave.infra.wal", "push", "--target", str(setup.target_file),
         name, name],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0], run.stderr


def test_the_chain_is_planned_across_timelines_and_gaps_are_named(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects", "stave")
    env_name = f"w{uuid.uuid4().hex[:6]}"
    archive(store, env_name, tmp_path, *names(1, 1, 6), "00000002.history", *names(2, 6, 8))
    wal.push(store, env_name, SYSTEM, segment(tmp_path, "x"), names(1, 6, 6)[0] + ".partial")
    plan = walchain.plan(store, env_name, SYSTEM, names(1, 3, 3)[0])
    assert names(1, 1, 2)[0] not in plan.keys  # before the base backup: not needed
    assert plan.segments == 4 + 3 and plan.last == names(2, 8, 8)[0]
    assert "00000002.history" in plan.keys
    fetched = tmp_path / "fetched"
    walchain.fetch_all(store, plan, fetched)
    assert (fetched / names(2, 7, 7)[0]).read_bytes().startswith(names(2, 7, 7)[0].encode())

    store.delete(wal.wal_key(env_name, SYSTEM, names(1, 4, 4)[0]))
    with pytest.raises(ObjectCorrupted, match=f"{names(1, 4, 4)[0]} is missing"):
        walchain.plan(store, env_name, SYSTEM, names(1, 3, 3)[0])
    with pytest.raises(ObjectCorrupted, match="the base backup's start"):
        walchain.plan(store, env_name, SYSTEM, names(1, 20, 20)[0])


def test_a_corrupted_segment_is_named_before_replay(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects", "stave")
    env_name = f"w{uuid.uuid4().hex[:6]}"
    archive(store, env_name, tmp_path, *names(1, 1, 3))
    key = wal.wal_key(env_name, SYSTEM, names(1, 2, 2)[0])
    path = store.base / key
    path.write_bytes(path.read_bytes()[:-3] + b"rot")  # bit rot under an intact record
    plan = walchain.plan(store, env_name, SYSTEM, names(1, 1, 1)[0])
    with pytest.raises(ObjectCorrupted, match=key):
        walchain.check_all(store, plan)


def fake_base(store: ObjectStore, env_name: str, start: str, days_old: float) -> str:
    ident = uuid.uuid4()
    when = utcnow() - timedelta(days=days_old)
    key = f"{env_name}/backups/base/{ident}.tar"
    info = store.put_bytes(key, b"tar")
    manifest = {
        "id": str(ident),
        "kind": "base",
        "bytes": info.size,
        "sha256": info.sha256,
        "start_wal": start,
        "wal_segment_size": wal.DEFAULT_SEGMENT_SIZE,
        "system_identifier": SYSTEM,
        "started_at": when.isoformat(),
        "finished_at": when.isoformat(),
    }
    store.put_bytes(key + ".manifest.json", json.dumps(manifest).encode())
    return str(ident)


def test_base_retention_deletes_the_wal_only_dropped_backups_needed(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects", "stave")
    env_name = f"w{uuid.uuid4().hex[:6]}"
    archive(store, env_name, tmp_path, *names(1, 1, 9), "00000001.history")
    for start, age in ((2, 30), (5, 8), (8, 0)):
        fake_base(store, env_name, names(1, start, start)[0], age)
    result = backup.apply_base_retention(None, store, env_name=env_name, daily=2, weekly=0)
    assert len(result["deleted"]) == 1 and result["wal_deleted"] == 4  # segments 1..4
    left = [wal.split_key(i.key, env_name) for i in store.list(wal.wal_prefix(env_name))]
    assert sorted(n for _, n in filter(None, left)) == ["00000001.history", *names(1, 5, 9)]
    assert [b.manifest["start_wal"] for b in backup.stored_backups(store, env_name)] == [
        names(1, 8, 8)[0],
        names(1, 5, 5)[0],
    ]


@pytest.mark.integration
def test_a_base_backup_needs_a_server_that_archives(
    engine: Engine, database_url: str, settings: Settings
) -> None:
    """The session's server does not archive: a base backup would never be recoverable."""
    with pytest.raises(ConfigError, match="archive_mode is off"):
        pitr.take_base_backup(engine, make_object_store(settings), url=database_url, env_name="dev")
    assert not pitr.archiving_enabled(database_url)


def test_verifying_a_base_backup_checks_it_and_its_wal_and_names_what_is_wrong(
    tmp_path: Path,
) -> None:
    store = FilesystemStore(tmp_path / "objects", "stave")
    env_name = f"w{uuid.uuid4().hex[:6]}"
    archive(store, env_name, tmp_path, *names(1, 1, 4))
    ident = fake_base(store, env_name, names(1, 2, 2)[0], 0)
    report = pitr.verify_base(store, env_name, ident)
    assert report["wal_files"] == 3 and report["last_segment"] == names(1, 4, 4)[0]
    assert backup.find_backup(store, env_name, ident, kind="base").verified_at is not None
    tar = store.base / f"{env_name}/backups/base/{ident}.tar"
    tar.write_bytes(b"rot")
    with pytest.raises(ObjectCorrupted, match=f"{env_name}/backups/base/{ident}.tar"):
        pitr.verify_base(store, env_name, ident)
