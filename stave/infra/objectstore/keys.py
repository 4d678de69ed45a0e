"""Object keys: the only place that decides where things live in the object store.

Keys are built from server-made ids and fixed words only, never from user text, and every key
that reaches a store is validated here first.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime

from stave.infra.errors import InvalidKey

MAX_KEY_LENGTH = 512
AUDIO_FORMATS = frozenset({"flac", "wav", "ogg", "mp3"})

# Segments of lower-case letters, digits and `_ . = -`, starting with a letter or digit (so no
# hidden files and no `..`), joined by single slashes; `=` allows hive partitions (year=2026).
_SEGMENT = r"[a-z0-9][a-z0-9_.=-]{0,127}"
_KEY = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})*$")
_PREFIX = re.compile(rf"^(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?$")


def validate_key(key: str) -> str:
    """Return `key` if it is a safe object key, else raise InvalidKey saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key is longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key[:80]!r} starts with '/'")
    if ".." in key:
        raise InvalidKey(f"object key {key[:80]!r} contains '..'")
    if not _KEY.match(key):
        raise InvalidKey(
            f"object key {key[:80]!r} has characters outside [a-z0-9_.=-] or an empty segment"
        )
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key, but allows the empty prefix and a trailing slash."""
    if ".." in prefix or prefix.startswith("/") or not _PREFIX.match(prefix):
        raise InvalidKey(f"object key prefix {prefix[:80]!r} is not a safe prefix")
    return prefix


def _fmt(fmt: str) -> str:
    if fmt not in AUDIO_FORMATS:
        raise InvalidKey(f"audio format {fmt!r} is not one of {sorted(AUDIO_FORMATS)}")
    return fmt


def env_root(env: str) -> str:
    """`<env>/`: everything an environment writes lives under its own prefix, so environments
    sharing a bucket never mix (and a lifecycle rule can target one)."""
    return validate_prefix(f"{env}/")


def audio_key(env: str, asset_id: uuid.UUID, fmt: str = "flac") -> str:
    """<env>/audio/<asset id>.<format>: a published clip."""
    return validate_key(f"{env}/audio/{asset_id}.{_fmt(fmt)}")


def is_archived_key(key: str) -> bool:
    """Whether an object already lives under an archive prefix (moved there by archival)."""
    return key.startswith("archive/") or key.split("/", 2)[1:2] == ["archive"]


def archived_audio_key(env: str, asset_id: uuid.UUID, fmt: str = "flac") -> str:
    """<env>/archive/audio/<asset id>.<format>: a clip whose records were archived."""
    return validate_key(f"{env}/archive/audio/{asset_id}.{_fmt(fmt)}")


def backups_prefix(env: str) -> str:
    """<env>/backups/: dumps, base backups, their manifests and the archived WAL."""
    return validate_prefix(f"{env}/backups/")


def models_prefix(env: str) -> str:
    """<env>/models/: trained checkpoints, each with its model card."""
    return validate_prefix(f"{env}/models/")


def model_key(env: str, sha256: str, suffix: str) -> str:
    """<env>/models/stave-small-<sha256[:16]>.<pt|json>: named by content, never by user text."""
    if suffix not in ("pt", "json") or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise InvalidKey(f"model key: a sha256 and pt or json, not {sha256[:16]!r} {suffix!r}")
    return validate_key(f"{models_prefix(env)}stave-small-{sha256[:16]}.{suffix}")


def backup_key(env: str, kind: str, backup_id: uuid.UUID, started_at: datetime) -> str:
    """<env>/backups/<kind>/<yyyy>/<mm>/<dd>/<backup id>.<ext>."""
    ext = {"dump": "dump", "base": "tar"}.get(kind)
    if ext is None:
        raise InvalidKey(f"backup kind {kind!r} is not 'dump' or 'base'")
    day = started_at.strftime("%Y/%m/%d")
    return validate_key(f"{backups_prefix(env)}{kind}/{day}/{backup_id}.{ext}")


def archive_key(env: str, table: str, year: int, month: int, batch_id: uuid.UUID) -> str:
    """<env>/archive/<table>/year=<yyyy>/month=<mm>/<batch id>.parquet (hive partitions)."""
    if not 1 <= month <= 12:
        raise InvalidKey(f"month {month} is not 1-12")
    return validate_key(
        f"{env}/archive/{table}/year={year:04d}/month={month:02d}/{batch_id}.parquet"
    )


def prompts_key(env: str, sha256: str, fmt: str) -> str:
    """<env>/prompts/<sha256>.<ext>: an uploaded prompt file, named by its content."""
    return validate_key(f"{env}/prompts/{sha256}.{fmt}")


# Where each kind of object lived before keys were scoped by environment: (old prefix, new
# prefix) for `stave store migrate-keys`. `{env}` is the environment's name.
LEGACY_PREFIXES = (
    ("backups/{env}/", "{env}/backups/"),
    ("gallery/{env}/", "{env}/gallery/"),
    ("data-docs/{env}/", "{env}/data-docs/"),
    ("audio/", "{env}/audio/"),
    ("archive/", "{env}/archive/"),
    ("prompts/", "{env}/prompts/"),
)


def scoped_key(env: str, key: str) -> str | None:
    """The environment-scoped key for a key written before scoping; None if `key` is not one."""
    for old, new in LEGACY_PREFIXES:
        prefix = old.format(env=env)
        if key.startswith(prefix):
            return validate_key(new.format(env=env) + key.removeprefix(prefix))
    return None


def site_key(prefix: str, relpath: str) -> str:
    """The key of one file of a static site published under `prefix` (a gallery, Data Docs):
    each segment of its path made safe (lower case, `-` for anything outside the key
    alphabet, and a short digest of the original where that changed it, so two names never
    meet). Pages' links are rewritten to these keys when the site is published."""
    safe = []
    for segment in relpath.split("/"):
        cleaned = re.sub(r"[^a-z0-9_.=-]", "-", segment.lower()).lstrip("_.=-")
        if cleaned != segment or not cleaned:
            stem, dot, ext = cleaned.rpartition(".")
            digest = hashlib.sha1(segment.encode()).hexdigest()[:8]
            cleaned = f"{stem or 'x'}-{digest}{dot}{ext}" if dot else f"{cleaned or 'x'}-{digest}"
        safe.append(cleaned[:127])
    return validate_key(f"{validate_prefix(prefix).rstrip('/')}/{'/'.join(safe)}")


def gallery_prefix(env: str, job_id: uuid.UUID) -> str:
    """<env>/gallery/<job id>/: a job's listening page."""
    return validate_prefix(f"{env}/gallery/{job_id}/")


def data_docs_prefix(env: str) -> str:
    """<env>/data-docs/: the validation suite's Data Docs site."""
    return validate_prefix(f"{env}/data-docs/")
