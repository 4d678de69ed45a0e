"""One contract, two stores: the filesystem store and the MinIO store against a real S3 server."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stave.infra.errors import InvalidKey, ObjectCorrupted, ObjectNotFound
from stave.infra.objectstore.base import ObjectStore, sha256_hex
from stave.infra.objectstore.filesystem import FilesystemStore
from stave.infra.objectstore.minio_store import MinioStore

pytestmark = pytest.mark.integration


def minio_store(endpoint: str, bucket: str, **kwargs: object) -> MinioStore:
    return MinioStore(
        endpoint=endpoint,
        access_key="test-access",
        secret_key="test-secret",
        bucket=bucket,
        secure=False,
        part_size=5 * 1024 * 1024,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["filesystem", "minio"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, bucket_name: str
) -> Iterator[ObjectStore]:
    if request.param == "filesystem":
        yield FilesystemStore(tmp_path / "objects", bucket_name)
    else:
        yield minio_store(request.getfixturevalue("s3_endpoint"), bucket_name)


def corrupt(store: ObjectStore, key: str) -> None:
    """Change an object's bytes behind the store's back, keeping its recorded sha256."""
    if isinstance(store, FilesystemStore):
        (store.base / key).write_bytes(b"bit rot")
    else:
        assert isinstance(store, MinioStore)
        recorded = store.stat(key).sha256
        store.client.put_object(
            store.bucket, key, io.BytesIO(b"bit rot"), 7, metadata={"sha256": str(recorded)}
        )


def test_put_get_stat_bytes(store: ObjectStore) -> None:
    info = store.put_bytes("audio/a.flac", b"hello", content_type="audio/flac")
    assert info.sha256 == sha256_hex(b"hello") and info.size == 5
    stat = store.stat("audio/a.flac")
    assert (stat.size, stat.sha256, stat.content_type) == (5, sha256_hex(b"hello"), "audio/flac")
    assert store.get_bytes("audio/a.flac") == b"hello"
    assert store.exists("audio/a.flac") and not store.exists("audio/b.flac")


def test_put_stream_of_unknown_length_records_sha256(store: ObjectStore) -> None:
    data = os.urandom(11 * 1024 * 1024)  # three multipart parts at a 5 MiB part size
    info = store.put_stream("backups/dev/dump/x.dump", io.BytesIO(data))
    assert (info.size, info.sha256) == (len(data), sha256_hex(data))
    assert store.stat("backups/dev/dump/x.dump").sha256 == sha256_hex(data)
    chunks = list(store.iter_chunks("backups/dev/dump/x.dump", chunk_size=1024 * 1024))
    assert b"".join(chunks) == data and len(chunks) >= 11


def test_overwrite_replaces_bytes_and_sha256(store: ObjectStore) -> None:
    store.put_bytes("audio/a.flac", b"one")
    store.put_bytes("audio/a.flac", b"two")
    assert store.get_bytes("audio/a.flac") == b"two"
    assert store.stat("audio/a.flac").sha256 == sha256_hex(b"two")


def test_list_by_prefix_in_key_order(store: ObjectStore) -> None:
    for key in (
        "audio/b.flac",
        "audio/a.flac",
        "archive/t/year=2026/month=05/x.parquet",
        "audiox/c",
    ):
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("audio/")] == ["audio/a.flac", "audio/b.flac"]
    assert [o.key for o in store.list("archive/")] == ["archive/t/year=2026/month=05/x.parquet"]
    assert len(list(store.list())) == 4
    assert [o.size for o in store.list("audio/")] == [len(b"audio/a.flac")] * 2


def test_copy_keeps_bytes_and_sha256(store: ObjectStore) -> None:
    store.put_bytes("audio/a.flac", b"clip", content_type="audio/flac")
    copied = store.copy("audio/a.flac", "archive/audio/a.flac")
    assert copied.sha256 == sha256_hex(b"clip") and copied.size == 4
    assert store.get_bytes("archive/audio/a.flac") == b"clip"
    assert store.get_bytes("audio/a.flac") == b"clip"


def test_delete_is_idempotent_and_delete_many(store: ObjectStore) -> None:
    store.put_bytes("audio/a.flac", b"1")
    store.put_bytes("audio/b.flac", b"2")
    store.delete("audio/a.flac")
    store.delete("audio/a.flac")
    with pytest.raises(ObjectNotFound):
        store.stat("audio/a.flac")
    store.delete_many(["audio/b.flac", "audio/never-there.flac"])
    assert list(store.list("audio/")) == []


def test_missing_object_is_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match=r"audio/none\.flac"):
        store.get_bytes("audio/none.flac")
    with pytest.raises(ObjectNotFound):
        store.copy("audio/none.flac", "audio/other.flac")


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "audio/../../x",
        "/abs/key",
        "a//b",
        "audio/",
        ".meta/x",
        "audio/.hidden",
        "My Prompt About Rain",
        "audio/ünïcode",
        "",
        "a" * 513,
        "audio/x;rm -rf",
    ],
)
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        store.stat(key)


def test_corrupted_object_is_detected_by_sha256(store: ObjectStore) -> None:
    store.put_bytes("audio/a.flac", b"the real clip")
    corrupt(store, "audio/a.flac")
    with pytest.raises(ObjectCorrupted, match=r"audio/a\.flac"):
        store.get_bytes("audio/a.flac")
    with pytest.raises(ObjectCorrupted):
        store.verify("audio/a.flac")


def test_expected_sha256_from_the_record_wins(store: ObjectStore) -> None:
    store.put_bytes("audio/a.flac", b"clip")
    assert store.get_bytes("audio/a.flac", expected_sha256=sha256_hex(b"clip")) == b"clip"
    with pytest.raises(ObjectCorrupted):
        store.get_bytes("audio/a.flac", expected_sha256=sha256_hex(b"another clip"))


def test_check_passes_on_a_working_store(store: ObjectStore) -> None:
    store.check()
    assert not store.exists("doctor/probe")
