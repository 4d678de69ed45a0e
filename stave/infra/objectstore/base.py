"""The object-store interface every store implements, and the hashing helpers they share."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from stave.infra.errors import ObjectCorrupted, ObjectNotFound

DEFAULT_CONTENT_TYPE = "application/octet-stream"
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # sha256 of the bytes, as recorded when the object was written (None where unknown,
    # e.g. in S3 listings, which carry no user metadata).
    sha256: str | None
    content_type: str = DEFAULT_CONTENT_TYPE
    last_modified: datetime | None = None


class HashingReader:
    """Wraps a binary stream, hashing and counting what is read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(key: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise ObjectCorrupted(
            f"object {key} is corrupted: sha256 {actual[:12]}… does not match the recorded "
            f"{expected[:12]}…"
        )


class ChunkReader:
    """A file-like view of an iterator of byte chunks: an object's `iter_chunks` read by
    something that wants a stream (tarfile's streaming mode, another store's `put_stream`)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks, self.buffer = iter(chunks), b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            try:
                self.buffer += next(self.chunks)
            except StopIteration:
                break
        if size < 0:
            size = len(self.buffer)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


class ObjectStore(ABC):
    """Put, get, stat, list, copy, delete by key; every read can be checked against a sha256.

    Reads verify the bytes against `expected_sha256` when the caller has one (the database
    record is the authority), else against the sha256 the store recorded at write time.
    """

    kind: str = "abstract"

    @abstractmethod
    def describe(self) -> str:
        """Where this store is, for messages (no credentials)."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageUnavailable unless the store can be read and written."""

    @abstractmethod
    def url(self, key: str, expires: timedelta) -> str:
        """A link a browser can open the object at: presigned for `expires` on S3, a
        `file://` URL on the filesystem store."""

    # Whether links between objects under one prefix resolve as they do between files (a
    # page's relative links): on a filesystem, yes; on S3 each object needs its own signature.
    relative_links: bool = True

    @abstractmethod
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        sha256: str | None = None,
    ) -> ObjectInfo:
        """Write `data` under `key`. `sha256` is the bytes' digest where the caller has
        already computed it (it is recorded as given, not computed again)."""

    @abstractmethod
    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ObjectInfo:
        """Write from a stream of unknown length without holding it all in memory."""

    @abstractmethod
    def _read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The object's raw bytes, unverified."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under `prefix`, in key order."""

    @abstractmethod
    def copy(self, source: str, destination: str) -> ObjectInfo: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    def iter_chunks(
        self, key: str, *, expected_sha256: str | None = None, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """Yield the object's bytes; raise ObjectCorrupted after the last chunk on mismatch.

        Callers that act on the bytes (restore, decode) must finish the iteration first.
        """
        expected = expected_sha256 or self.stat(key).sha256
        digest = hashlib.sha256()
        for chunk in self._read_chunks(key, chunk_size):
            digest.update(chunk)
            yield chunk
        check_sha256(key, digest.hexdigest(), expected)

    def get_bytes(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        return b"".join(self.iter_chunks(key, expected_sha256=expected_sha256))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def verify(self, key: str, *, expected_sha256: str | None = None) -> ObjectInfo:
        """Read the whole object and check its sha256; return its info."""
        for _ in self.iter_chunks(key, expected_sha256=expected_sha256):
            pass
        return self.stat(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)
