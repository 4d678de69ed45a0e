"""`stave store migrate-keys`: objects written before keys were scoped by environment move
under `<env>/`, checked by sha256, rows repointed, old objects gone; killed half-way, a rerun
finishes; another environment's objects and prompts stay where they are."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.filesystem import FilesystemStore
from stave.tasks.keymigration import migrate_keys

pytestmark = pytest.mark.integration


class DiesOnDelete(FilesystemStore):
    """A store whose process dies (an exception) at its n-th delete."""

    def __init__(self, root: Path, bucket: str, after: int) -> None:
        super().__init__(root, bucket)
        self.deletes_left = after

    def delete(self, key: str) -> None:
        self.deletes_left -= 1
        if self.deletes_left < 0:
            raise KeyboardInterrupt("killed")
        super().delete(key)


def legacy_world(engine: Engine, store: ObjectStore, env: str) -> dict[str, str]:
    """Objects and rows as an environment wrote them before keys were scoped."""
    asset_id, archived_id, backup_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    keys = {
        "audio": f"audio/{asset_id}.flac",
        "archived": f"archive/audio/{archived_id}.flac",
        "parquet": f"archive/generation_task/year=2026/month=01/{uuid.uuid4()}.parquet",
        "dump": f"backups/{env}/dump/2026/01/01/{backup_id}.dump",
        "wal": f"backups/{env}/wal/123/000000010000000000000001.zz",
        "docs": f"data-docs/{env}/index.html",
        "other_env_audio": f"audio/{uuid.uuid4()}.flac",
        "prompts": f"prompts/{'ab' * 32}.csv",
    }
    sha = {
        name: store.put_bytes(key, f"bytes of {name}".encode()).sha256 for name, key in keys.items()
    }
    store.put_bytes(keys["dump"] + ".manifest.json", json.dumps({"id": str(backup_id)}).encode())
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audio_asset (id, user_id, object_key, sha256, bytes, format, "
                "sample_rate, channels, duration_s) VALUES (:id, 'u', :k, :s, 10, 'flac', "
                "16000, 1, 1.0)"
            ),
            {"id": asset_id, "k": keys["audio"], "s": sha["audio"]},
        )
        conn.execute(
            text(
                "INSERT INTO backup_record (id, env, kind, status, object_key, sha256) "
                "VALUES (:id, :env, 'dump', 'succeeded', :k, :s)"
            ),
            {"id": backup_id, "env": env, "k": keys["dump"], "s": sha["dump"]},
        )
        conn.execute(
            text(
                "INSERT INTO archive_batch (id, table_name, object_key, row_count, checksum, "
                "time_from, time_to, moved_objects) VALUES (:id, 'generation_task', :k, 1, "
                "'x', :t, :t, CAST(:moved AS jsonb))"
            ),
            {
                "id": uuid.uuid4(),
                "k": keys["parquet"],
                "t": datetime(2026, 1, 1, tzinfo=UTC),
                "moved": json.dumps(
                    [{"asset_id": str(archived_id), "from": "x", "to": keys["archived"],
                      "sha256": sha["archived"]}]
                ),
            },
        )  # fmt: skip
    return {**keys, **{f"sha:{k}": v for k, v in sha.items()}, "asset_id": str(asset_id)}


def test_keys_move_under_the_environment_resumably(engine: Engine, tmp_path: Path) -> None:
    env = f"mig{uuid.uuid4().hex[:6]}"
    store = FilesystemStore(tmp_path / "objects", "stave")
    world = legacy_world(engine, store, env)

    with pytest.raises(KeyboardInterrupt):
        migrate_keys(engine, DiesOnDelete(tmp_path / "objects", "stave", after=2), env)
    done = migrate_keys(engine, store, env)
    assert done.left == 2  # another environment's audio, and the prompts
    for name in ("audio", "archived", "parquet", "dump", "wal", "docs"):
        old = world[name]
        new = {
            "dump": old.replace(f"backups/{env}/", f"{env}/backups/"),
            "wal": old.replace(f"backups/{env}/", f"{env}/backups/"),
            "docs": old.replace(f"data-docs/{env}/", f"{env}/data-docs/"),
        }.get(name, f"{env}/{old}")
        assert not store.exists(old), old
        assert store.verify(new, expected_sha256=world[f"sha:{name}"]), new
    assert store.exists(f"{env}/backups/dump/2026/01/01/{Path(world['dump']).name}.manifest.json")
    assert store.exists(world["other_env_audio"]) and store.exists(world["prompts"])
    with engine.connect() as conn:
        key = conn.execute(
            text("SELECT object_key FROM audio_asset WHERE id = :id"), {"id": world["asset_id"]}
        ).scalar_one()
        dump = conn.execute(
            text("SELECT object_key FROM backup_record WHERE env = :e"), {"e": env}
        ).scalar_one()
    assert key == f"{env}/{world['audio']}" and dump.startswith(f"{env}/backups/dump/")
    again = migrate_keys(engine, store, env)
    assert (again.objects, again.rows) == (0, 0)
