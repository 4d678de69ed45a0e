"""Object stores behind one interface: filesystem (embedded default) and MinIO / S3."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stave.infra.objectstore.base import ObjectInfo, ObjectStore
from stave.infra.objectstore.filesystem import FilesystemStore
from stave.infra.objectstore.keys import validate_key

if TYPE_CHECKING:  # the WAL archive command builds a store without loading the settings
    from stave.infra.settings import Settings


def make_object_store(settings: Settings) -> ObjectStore:
    """The store the settings point at: S3 when an endpoint is configured, else the filesystem."""
    if settings.s3_endpoint is not None:
        from stave.infra.objectstore.minio_store import MinioStore  # minio, only when used

        return MinioStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value()
            if settings.s3_access_key
            else None,
            secret_key=settings.s3_secret_key.get_secret_value()
            if settings.s3_secret_key
            else None,
            bucket=settings.bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            part_size=settings.s3_part_size_mb * 1024 * 1024,
            max_retries=settings.s3_max_retries,
            backoff_s=settings.s3_retry_backoff_s,
        )

    return FilesystemStore(settings.object_root, settings.bucket)


__all__ = ["ObjectInfo", "ObjectStore", "make_object_store", "validate_key"]
