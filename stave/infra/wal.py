"""Continuous WAL archiving straight to the object store, and fetching it back verified.

PostgreSQL runs `archive_command` for every finished segment; Stave's command is
`python -m stave.infra.wal push --target FILE %p %f`. It compresses the segment (zstd level 1:
a segment closed early by `archive_timeout` is mostly empty pages and shrinks from 16 MiB to
a few KiB; a sample of it decides, so incompressible WAL is stored as it is), puts it under
`<env>/backups/wal/<system id>/<name>.zz` with its sha256 recorded by the store, checks the
store's record of it, and only then exits 0, so the server recycles the local file only once
the store holds it.
A name that is already there with the same bytes is success (a retry after a crash between
the put and the exit); with other bytes it is refused. The cluster's system identifier (from
`global/pg_control`, the same in every physical copy, new at every initdb) keeps a fresh cluster
started after a disaster from colliding with the lost one's segment names, while a cluster
recovered from a base backup continues its original's WAL on a new timeline.

The target file (JSON, mode 0600) names the environment and the store, so the command works
whatever environment the server process was started with. `fetch` reads a segment back: the
store's recorded sha256 must exist and match, and the compressed stream must decompress whole
(zstd's own checksum; zlib's for segments archived before zstd), or the named object is
reported as corrupted.

Why not barman-cloud (the issue's preference): Stave's filesystem store is a folder, which
barman-cloud cannot write; barman-cloud records no checksum per segment, so a corrupted
segment would end a recovery early and silently (PostgreSQL treats it as the end of the WAL);
barman-cloud-backup must run on the database host with the data directory, where Stave's base
backups stream over the replication protocol from any host; and barman 3.20 needs Python 3.12.
`bench/recovery.py` measures this command against the store's own client.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import site
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import zstandard

from stave.infra.errors import (
    ConfigError,
    InvalidInput,
    ObjectCorrupted,
    ObjectNotFound,
    first_line,
)
from stave.infra.objectstore import make_object_store
from stave.infra.objectstore.base import ObjectStore, sha256_hex
from stave.infra.objectstore.filesystem import FilesystemStore
from stave.infra.objectstore.keys import backups_prefix, validate_key, validate_prefix

if TYPE_CHECKING:  # this module is the archive command: pydantic-settings stays unloaded
    from stave.infra.settings import Settings

# Segments (24 hex digits), partial segments left at a promotion, timeline history files and
# backup history files: everything PostgreSQL hands to archive_command.
WAL_NAME = re.compile(r"^[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?$|^[0-9A-F]{8}\.history$")
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
SUFFIX = ".zz"
CONTENT_TYPE = "application/octet-stream"
# Stored as one byte saying how, then the bytes: zstd level 1, or as they are when a sample
# shows they would not shrink by a fifth. zstd, not zlib: the archive command runs on the
# database host for every 16 MiB of WAL, and on a bulk submission's WAL zlib level 1 took 0.12 s
# a segment (60% of the command's CPU, beside the database on the same cores) for a ratio of
# 0.29, zstd level 1 0.03 s for 0.20. Segments archived with zlib (ZLIB) still read back.
ZSTD, ZLIB, RAW = b"S", b"Z", b"R"
ZSTD_LEVEL = 1
SAMPLE = 1 << 20
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

# The settings the archive command needs to reach the store; nothing else is written down.
_STORE_FIELDS = (
    "object_root",
    "env",
    "bucket",
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "s3_secure",
    "s3_region",
    "s3_part_size_mb",
    "s3_max_retries",
    "s3_retry_backoff_s",
)
_SECRETS = ("s3_access_key", "s3_secret_key")


def wal_prefix(env_name: str, system: str | None = None) -> str:
    """Where an environment's WAL lives: one folder per cluster (system identifier)."""
    return validate_prefix(f"{backups_prefix(env_name)}wal/" + (f"{system}/" if system else ""))


def wal_key(env_name: str, system: str, name: str) -> str:
    if not WAL_NAME.match(name):
        raise InvalidInput(f"{name!r} is not a WAL file name")
    return validate_key(f"{wal_prefix(env_name, system)}{name.lower()}{SUFFIX}")


def system_identifier(pgdata: Path) -> str:
    """The cluster's system identifier: the first 8 bytes of `global/pg_control`."""
    with open(pgdata / "global" / "pg_control", "rb") as handle:
        return str(int.from_bytes(handle.read(8), "little"))


def split_key(key: str, env_name: str) -> tuple[str, str] | None:
    """(system identifier, WAL file name) an object key holds, or None for anything else."""
    rest = key.removeprefix(wal_prefix(env_name))
    system, _, leaf = rest.partition("/")
    if rest == key or not system.isdigit() or not leaf.endswith(SUFFIX) or "/" in leaf:
        return None
    name = leaf.removesuffix(SUFFIX).upper()
    name = name.replace(".HISTORY", ".history").replace(".PARTIAL", ".partial")
    name = name.replace(".BACKUP", ".backup")
    return (system, name) if WAL_NAME.match(name) else None


def segment_number(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segment number) of a 24-digit segment name."""
    match = SEGMENT.match(name[:24])
    if match is None:
        raise InvalidInput(f"{name!r} is not a WAL segment name")
    timeline, log_id, seg = (int(part, 16) for part in match.groups())
    return timeline, log_id * (0x100000000 // segment_size) + seg


def segment_name(timeline: int, number: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


# -- push and fetch ---------------------------------------------------------------------------
def push(store: ObjectStore, env_name: str, system: str, path: Path, name: str) -> str:
    """Archive one WAL file; returns its key. Raises unless the store holds exactly it."""
    key = wal_key(env_name, system, name)
    original = path.read_bytes()
    data = pack(original)
    sha = sha256_hex(data)
    try:
        held = store.stat(key)
    except ObjectNotFound:
        held = None
    if held is not None:
        # The same segment, stored before (a retry after a crash between the put and the exit;
        # packed by an earlier release, perhaps with zlib): success.
        if held.sha256 == sha or _holds(store, key, original):
            return key
        raise ObjectCorrupted(
            f"{key} is already in the store with other bytes: was this cluster copied other "
            "than by a base backup and recovery?"
        )
    store.put_bytes(key, data, content_type=CONTENT_TYPE)
    # What the store now holds is checked by its record (size and sha256), not by reading the
    # segment back: that doubled the transfer, and every recovery and `stave backup verify`
    # reads and checks the bytes themselves.
    held = store.stat(key)
    if held.size != len(data) or held.sha256 != sha:
        raise ObjectCorrupted(f"{key} was not stored as sent (size {held.size}, not {len(data)})")
    return key


def _holds(store: ObjectStore, key: str, original: bytes) -> bool:
    try:
        return fetch(store, key) == original
    except ObjectCorrupted:
        return False


def pack(original: bytes) -> bytes:
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    sample = original[:SAMPLE]
    if sample and len(compressor.compress(sample)) > 0.8 * len(sample):
        return RAW + original
    return ZSTD + compressor.compress(original)


def fetch(store: ObjectStore, key: str) -> bytes:
    """A WAL object's original bytes, checked against its recorded sha256 (and the
    compression's own check where it was compressed)."""
    recorded = store.stat(key).sha256
    if recorded is None:
        raise ObjectCorrupted(f"{key} has no recorded sha256: it was not archived by Stave")
    data = store.get_bytes(key, expected_sha256=recorded)
    how, body = data[:1], data[1:]
    try:
        if how == ZSTD:
            return bytes(zstandard.ZstdDecompressor().decompress(body))
        if how == ZLIB:
            return zlib.decompress(body)
    except (zstandard.ZstdError, zlib.error) as err:
        raise ObjectCorrupted(f"{key} does not decompress: {err}") from None
    if how == RAW:
        return body
    raise ObjectCorrupted(f"{key} is not a WAL object Stave wrote (header {how!r})")


# -- the target file the server's archive_command reads ----------------------------------------
@dataclass(frozen=True)
class ArchiveSetup:
    """What to put in postgresql.conf for continuous archiving to the store."""

    target_file: Path
    command: str
    timeout_s: int

    def conf_lines(self) -> str:
        return (
            "wal_level = replica\n"
            "archive_mode = on\n"
            f"archive_command = '{self.command.replace(chr(39), chr(39) * 2)}'\n"
            f"archive_timeout = {self.timeout_s}\n"
        )


def write_target(
    settings: Settings, target_file: Path, *, owner: str | None = None
) -> ArchiveSetup:
    """Write the store settings the archive command needs (mode 0600, owned by `owner`, the
    server's OS user), and prepare a filesystem store's WAL folder for that user."""
    values: dict[str, Any] = {}
    for field in _STORE_FIELDS:
        value = getattr(settings, field)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = str(value.resolve())
        values[field] = value
    target_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = target_file.with_name(target_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(values, handle)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
        store = make_object_store(settings)
        if isinstance(store, FilesystemStore):
            _grant_wal_folders(store, settings.env, entry.pw_uid, entry.pw_gid)
    os.replace(tmp, target_file)
    command = f'{_interpreter(owner)} push --target "{target_file}" "%p" "%f"'
    return ArchiveSetup(target_file, command, settings.wal_archive_timeout_s)


def _interpreter(owner: str | None) -> str:
    """How the server's OS user runs this module: this interpreter when that user can execute
    it; else (as root, with Python under a private home) the system's Python of the same
    version, given this environment's site-packages."""
    runs_as_us = f'"{sys.executable}" -m stave.infra.wal'
    if owner is None or _can_execute(owner, sys.executable):
        return runs_as_us
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not _can_execute(owner, str(system)):
        raise ConfigError(
            f"the database's OS user {owner!r} cannot run {sys.executable} (nor {system}) for "
            "archive_command: install Stave with a Python that user can execute"
        )
    dirs = ", ".join(repr(d) for d in site.getsitepackages())
    code = (
        f"import site; [site.addsitedir(d) for d in ({dirs},)]; "
        "import stave.infra.wal as w; raise SystemExit(w.main())"
    )
    # -S: none of the system's own packages, which would shadow this environment's.
    return f'{system} -S -c "{code}"'


def _can_execute(user: str, path: str) -> bool:
    probe = subprocess.run(
        ["runuser", "-u", user, "--", "test", "-x", path], capture_output=True, check=False
    )
    return probe.returncode == 0


class _Secret(str):
    """A secret read from the target file, shaped as the settings' secrets are."""

    def get_secret_value(self) -> str:
        return str(self)


def store_from_target(target_file: Path) -> tuple[ObjectStore, str]:
    values = json.loads(target_file.read_text(encoding="utf-8"))
    for secret in _SECRETS:
        if values.get(secret) is not None:
            values[secret] = _Secret(values[secret])
    values["object_root"] = Path(values["object_root"])
    # The settings' store fields, without loading (and validating) all of the settings.
    settings = cast("Settings", SimpleNamespace(**values))
    return make_object_store(settings), str(values["env"])


def _grant_wal_folders(store: FilesystemStore, env_name: str, uid: int, gid: int) -> None:
    """As root, the server runs as its own OS user: let it write WAL into the folder store
    (its WAL folder, the sha256 records beside it, and the in-flight folder)."""
    prefix = wal_prefix(env_name).rstrip("/")
    for folder in (store.base / prefix, store.base / ".meta" / prefix, store.base / ".tmp"):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, uid, gid)
    # Each cluster's folder below is made by the server's user itself, on its first segment.


def main(argv: list[str] | None = None) -> int:
    """`python -m stave.infra.wal push --target FILE PATH NAME`: PostgreSQL's archive_command.

    Exit 0 only when the store holds the segment; otherwise one line on stderr (it goes to the
    server's log) and exit 1, and PostgreSQL retries later."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 5 or args[0] != "push" or args[1] != "--target":
        sys.stderr.write("usage: python -m stave.infra.wal push --target FILE PATH NAME\n")
        return 2
    target, path, name = Path(args[2]), Path(args[3]), args[4]
    try:
        store, env_name = store_from_target(target)
        # PostgreSQL runs archive_command in the data directory (%p is relative to it).
        push(store, env_name, system_identifier(Path.cwd()), path, name)
    except Exception as err:
        # One line on stderr: it lands in the server's log beside "archive command failed".
        sys.stderr.write(f"stave wal archive of {name} failed: {first_line(err)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
