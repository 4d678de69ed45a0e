"""The production object store: MinIO (or any S3 server) through the `minio` SDK.

Connection errors and 5xx answers are retried with exponential backoff by the HTTP client
(urllib3's Retry, which the SDK drives); what still fails becomes StorageUnavailable, so tasks
classify it as `storage_unavailable` and retry later.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error, ServerError
from urllib3.exceptions import HTTPError

from stave.infra.errors import ObjectNotFound, StaveError, StorageUnavailable
from stave.infra.objectstore.base import (
    DEFAULT_CONTENT_TYPE,
    HashingReader,
    ObjectInfo,
    ObjectStore,
    sha256_hex,
)
from stave.infra.objectstore.keys import validate_key, validate_prefix

T = TypeVar("T")
SHA256_META = "sha256"  # stored as x-amz-meta-sha256
_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "NotFound", "ResourceNotFound"}


class MinioStore(ObjectStore):
    kind = "s3"

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        secure: bool = True,
        region: str | None = None,
        part_size: int = 16 * 1024 * 1024,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
        self.bucket = bucket
        self.part_size = part_size
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 10.0), read=timeout_s),
            maxsize=16,
            retries=urllib3.Retry(
                total=max_retries,
                connect=max_retries,
                read=max_retries,
                backoff_factor=backoff_s,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=None,  # every request the SDK makes re-sends whole bytes
                raise_on_status=False,
            ),
        )
        self.client = Minio(
            self.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    relative_links = False

    def describe(self) -> str:
        return f"s3 store {self.endpoint}/{self.bucket}"

    def url(self, key: str, expires: timedelta) -> str:
        validate_key(key)
        return str(
            self._call(
                f"sign {key}",
                lambda: self.client.presigned_get_object(self.bucket, key, expires=expires),
            )
        )

    def check(self) -> None:
        self._ensure_bucket()
        probe = "doctor/probe"
        self.put_bytes(probe, b"ok")
        self.delete(probe)

    # -- writes -----------------------------------------------------------------------------
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        sha256: str | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        self._ensure_bucket()
        digest = sha256 or sha256_hex(data)
        self._call(
            f"put {key}",
            lambda: self.client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={SHA256_META: digest},
                part_size=self.part_size,
            ),
        )
        return ObjectInfo(key=key, size=len(data), sha256=digest, content_type=content_type)

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ObjectInfo:
        validate_key(key)
        self._ensure_bucket()
        reader = HashingReader(stream)
        # Unknown length: the SDK uploads multipart, one part in memory at a time. The sha256
        # is known only at the end, so it is recorded by a server-side self-copy.
        self._call(
            f"put {key}",
            lambda: self.client.put_object(
                self.bucket,
                key,
                reader,  # type: ignore[arg-type]
                -1,
                content_type=content_type,
                part_size=self.part_size,
            ),
        )
        self._call(
            f"record sha256 of {key}",
            lambda: self.client.copy_object(
                self.bucket,
                key,
                CopySource(self.bucket, key),
                metadata={SHA256_META: reader.sha256, "Content-Type": content_type},
                metadata_directive=REPLACE,
            ),
        )
        return ObjectInfo(
            key=key, size=reader.size, sha256=reader.sha256, content_type=content_type
        )

    def copy(self, source: str, destination: str) -> ObjectInfo:
        validate_key(source)
        validate_key(destination)
        self.stat(source)  # a clear ObjectNotFound before the copy
        self._call(
            f"copy {source} to {destination}",
            lambda: self.client.copy_object(
                self.bucket, destination, CopySource(self.bucket, source)
            ),
        )
        return self.stat(destination)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))

    def delete_many(self, keys: Iterable[str]) -> None:
        batch = [DeleteObject(validate_key(k)) for k in keys]
        if not batch:
            return
        # remove_objects is lazy: errors arrive only while iterating.
        errors = self._call(
            "delete objects", lambda: list(self.client.remove_objects(self.bucket, batch))
        )
        failed = [e for e in errors if e.code not in _MISSING]
        if failed:
            raise StorageUnavailable(
                f"{self.describe()}: could not delete {len(failed)} objects, "
                f"first {failed[0].name}: {failed[0].message}"
            )

    # -- reads ------------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        result = self._call(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
        meta = result.metadata or {}
        return ObjectInfo(
            key=key,
            size=int(result.size or 0),
            sha256=meta.get(f"x-amz-meta-{SHA256_META}"),
            content_type=result.content_type or DEFAULT_CONTENT_TYPE,
            last_modified=result.last_modified,
        )

    def _read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        validate_key(key)
        response = self._call(f"get {key}", lambda: self.client.get_object(self.bucket, key))
        try:
            yield from response.stream(chunk_size)
        except (HTTPError, OSError) as err:
            raise self._translate(f"read {key}", err) from err
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        self._ensure_bucket()
        # S3 lists in key order, page by page: stream it rather than hold millions of keys.
        listing = self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
        try:
            for item in listing:
                yield ObjectInfo(
                    key=str(item.object_name),
                    size=int(item.size or 0),
                    sha256=None,
                    last_modified=item.last_modified,
                )
        except (MinioException, HTTPError, OSError) as err:
            raise self._translate(f"list {prefix or '/'}", err) from err

    # -- plumbing ---------------------------------------------------------------------------
    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self._call("check bucket", lambda: self.client.bucket_exists(self.bucket)):
                try:
                    self._call("create bucket", lambda: self.client.make_bucket(self.bucket))
                except StorageUnavailable as err:
                    # Another process created it between our check and our create.
                    if "BucketAlreadyOwnedByYou" not in str(err):
                        raise
            self._bucket_ready = True

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (MinioException, HTTPError, OSError) as err:
            raise self._translate(what, err) from err

    def _translate(self, what: str, err: Exception) -> StaveError:
        """The one-line Stave error for an SDK or transport failure."""
        if isinstance(err, S3Error):
            if err.code in _MISSING:
                return ObjectNotFound(f"no object for {what} in {self.describe()}")
            return StorageUnavailable(f"{self.describe()}: {what} failed: {err.code}")
        if isinstance(err, ServerError):
            return StorageUnavailable(f"{self.describe()}: {what} failed: HTTP {err.status_code}")
        cause = getattr(err, "reason", None) or err
        return StorageUnavailable(
            f"{self.describe()}: {what} failed: {cause}; is the object store up, and "
            "STAVE_S3_ENDPOINT right? (`stave doctor` checks it)"
        )
