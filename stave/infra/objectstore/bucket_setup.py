"""`stave store setup`: the bucket's lifecycle rules, versioning and object lock, idempotently.

Rules carry ids starting `stave-<env>-` (and `stave-abort-incomplete-uploads`, bucket-wide);
a run replaces its own environment's rules and keeps every other rule on the bucket, so
environments sharing a bucket each set theirs. Each item is reported as applied, refused
(with the server's reason) or not applicable, so a server that lacks a feature says so
instead of failing.

- Incomplete multipart uploads (a killed backup or upload) are aborted after a day.
- Uploaded prompt files (`<env>/prompts/`) expire after `prompts_expire_days`.
- Jobs' listening pages (`<env>/gallery/`) expire after `gallery_keep_days`; Data Docs pages of
  batches (`<env>/data-docs/validations/`) after `data_docs_keep_days` (Stave deletes those it
  prunes itself; the rule catches what it missed). The Data Docs' index, suite page and assets
  are put again whenever they change and carry no rule.
- Versioning is on, so a deleted or overwritten object stays as a noncurrent version: for
  `backups_keep_days` under `<env>/backups/` (a deleted backup can be brought back that long), a day
  elsewhere (audio that `stave gc` removes is not kept twice for long).
- Object lock: reported, not imposed. MinIO enables it only when a bucket is created (and a
  bucket-wide default retention would also lock audio that archival must move); where it is on,
  the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stave.infra.objectstore.base import ObjectStore

RULE_PREFIX = "stave-"
ABORT_RULE = f"{RULE_PREFIX}abort-incomplete-uploads"
# An environment's prefixes other than backups/ whose noncurrent versions are kept a day.
SHORT_LIVED_VERSIONS = ("audio/", "archive/", "prompts/", "gallery/", "data-docs/")


@dataclass(frozen=True)
class Retention:
    """Days each expiring prefix of an environment is kept (settings of the same names)."""

    prompts_expire_days: int
    backups_keep_days: int
    gallery_keep_days: int
    data_docs_keep_days: int


def setup_bucket(store: ObjectStore, *, env: str, keep: Retention) -> list[dict[str, Any]]:
    """Apply the rules; one report item per feature."""
    from stave.infra.objectstore.minio_store import MinioStore  # minio, only when used

    if not isinstance(store, MinioStore):
        reason = "a filesystem store has no lifecycle, versioning or object lock"
        return [
            {"item": item, "status": "not applicable", "detail": reason}
            for item in ("lifecycle", "versioning", "object lock")
        ]
    return [
        _lifecycle(store, env, keep),
        _versioning(store),
        _object_lock(store),
    ]


def _rules(env: str, keep: Retention) -> list[Any]:
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import (
        AbortIncompleteMultipartUpload,
        Expiration,
        NoncurrentVersionExpiration,
        Rule,
    )

    rules = [
        Rule(
            ENABLED,
            rule_filter=Filter(prefix=""),
            rule_id=ABORT_RULE,
            abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(1),
        ),
        Rule(
            ENABLED,
            rule_filter=Filter(prefix=f"{env}/prompts/"),
            rule_id=f"{RULE_PREFIX}{env}-expire-prompts",
            expiration=Expiration(days=keep.prompts_expire_days),
        ),
        Rule(
            ENABLED,
            rule_filter=Filter(prefix=f"{env}/gallery/"),
            rule_id=f"{RULE_PREFIX}{env}-expire-gallery",
            expiration=Expiration(days=keep.gallery_keep_days),
        ),
        Rule(
            ENABLED,
            rule_filter=Filter(prefix=f"{env}/data-docs/validations/"),
            rule_id=f"{RULE_PREFIX}{env}-expire-data-docs-pages",
            expiration=Expiration(days=keep.data_docs_keep_days),
        ),
        Rule(
            ENABLED,
            rule_filter=Filter(prefix=f"{env}/backups/"),
            rule_id=f"{RULE_PREFIX}{env}-keep-deleted-backups",
            noncurrent_version_expiration=NoncurrentVersionExpiration(keep.backups_keep_days),
        ),
    ]
    for prefix in SHORT_LIVED_VERSIONS:
        name = prefix.rstrip("/")
        rules.append(
            Rule(
                ENABLED,
                rule_filter=Filter(prefix=f"{env}/{prefix}"),
                rule_id=f"{RULE_PREFIX}{env}-noncurrent-{name}",
                noncurrent_version_expiration=NoncurrentVersionExpiration(1),
            )
        )
    return rules


def _lifecycle(store: Any, env: str, keep: Retention) -> dict[str, Any]:
    from minio.error import S3Error
    from minio.lifecycleconfig import LifecycleConfig

    store._ensure_bucket()
    client, bucket = store.client, store.bucket
    try:
        current = client.get_bucket_lifecycle(bucket)
        kept = [r for r in (current.rules if current else []) if not _ours(r.rule_id, env)]
        ours = _rules(env, keep)
        client.set_bucket_lifecycle(bucket, LifecycleConfig(kept + ours))
    except S3Error as err:
        return {"item": "lifecycle", "status": "refused", "detail": f"{err.code}: {err.message}"}
    detail = (
        f"{len(ours)} rule(s): abort incomplete uploads after 1 day, {env}/prompts/ expire after "
        f"{keep.prompts_expire_days} days, {env}/gallery/ after {keep.gallery_keep_days}, "
        f"{env}/data-docs/validations/ after {keep.data_docs_keep_days}, deleted backups kept "
        f"{keep.backups_keep_days} days"
    )
    if kept:
        detail += f"; {len(kept)} other rule(s) kept"
    return {"item": "lifecycle", "status": "applied", "detail": detail}


def _versioning(store: Any) -> dict[str, Any]:
    from minio.commonconfig import ENABLED
    from minio.error import S3Error
    from minio.versioningconfig import VersioningConfig

    try:
        store.client.set_bucket_versioning(store.bucket, VersioningConfig(ENABLED))
        status = store.client.get_bucket_versioning(store.bucket).status
    except S3Error as err:
        return {"item": "versioning", "status": "refused", "detail": f"{err.code}: {err.message}"}
    if status != ENABLED:
        return {"item": "versioning", "status": "refused", "detail": f"server reports {status}"}
    return {"item": "versioning", "status": "applied", "detail": "enabled"}


def _object_lock(store: Any) -> dict[str, Any]:
    from minio.error import S3Error

    try:
        config = store.client.get_object_lock_config(store.bucket)
    except S3Error as err:
        return {
            "item": "object lock",
            "status": "refused",
            "detail": f"not enabled on this bucket ({err.code}); MinIO enables it only at "
            "creation (`mc mb --with-lock`); deleted backups stay recoverable through versioning",
        }
    mode = getattr(config, "mode", None)
    return {
        "item": "object lock",
        "status": "applied",
        "detail": f"enabled on the bucket (default retention: {mode or 'none'})",
    }


def _ours(rule_id: str | None, env: str) -> bool:
    return rule_id == ABORT_RULE or bool(rule_id and rule_id.startswith(f"{RULE_PREFIX}{env}-"))
