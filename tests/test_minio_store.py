"""MinIO-specific behaviour: bucket creation, retries on 5xx, unreachable servers."""

from __future__ import annotations

import time

import pytest

from stave.infra.errors import StorageUnavailable
from tests.test_objectstore_contract import minio_store
from tests.utils.flaky_proxy import FlakyProxy

pytestmark = pytest.mark.integration


def test_bucket_is_created_on_first_write(s3_endpoint: str, bucket_name: str) -> None:
    store = minio_store(s3_endpoint, bucket_name)
    assert not store.client.bucket_exists(bucket_name)
    store.put_bytes("audio/a.flac", b"x")
    assert store.client.bucket_exists(bucket_name)


def test_server_errors_are_retried_with_backoff(s3_endpoint: str, bucket_name: str) -> None:
    minio_store(s3_endpoint, bucket_name).put_bytes("audio/a.flac", b"clip")
    with FlakyProxy(s3_endpoint, failures=3) as proxy:
        store = minio_store(proxy.endpoint, bucket_name, max_retries=4, backoff_s=0.05)
        started = time.monotonic()
        assert store.get_bytes("audio/a.flac") == b"clip"
        assert proxy.requests >= 4  # three 503s answered, then the real ones
        assert time.monotonic() - started >= 0.05  # it backed off before retrying


def test_persistent_server_errors_become_storage_unavailable(
    s3_endpoint: str, bucket_name: str
) -> None:
    with FlakyProxy(s3_endpoint, failures=100) as proxy:
        store = minio_store(proxy.endpoint, bucket_name, max_retries=2, backoff_s=0.01)
        with pytest.raises(StorageUnavailable, match="503"):
            store.put_bytes("audio/a.flac", b"x")


def test_unreachable_server_is_storage_unavailable(bucket_name: str) -> None:
    store = minio_store("127.0.0.1:1", bucket_name, max_retries=1, backoff_s=0.01)
    with pytest.raises(StorageUnavailable, match=r"127\.0\.0\.1:1"):
        store.put_bytes("audio/a.flac", b"x")
    with pytest.raises(StorageUnavailable):
        store.check()
