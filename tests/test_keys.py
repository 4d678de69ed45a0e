"""Object keys: exact paths from server ids only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from stave.infra.errors import InvalidKey
from stave.infra.objectstore.keys import (
    archive_key,
    archived_audio_key,
    audio_key,
    backup_key,
    data_docs_prefix,
    gallery_prefix,
    is_archived_key,
    prompts_key,
    scoped_key,
    validate_key,
)

ID = uuid.UUID("0190a5c4-7b1e-7c3a-9f00-123456789abc")


def test_exact_paths_all_under_the_environment() -> None:
    assert audio_key("prod", ID) == "prod/audio/0190a5c4-7b1e-7c3a-9f00-123456789abc.flac"
    assert (
        archived_audio_key("prod", ID, "wav")
        == "prod/archive/audio/0190a5c4-7b1e-7c3a-9f00-123456789abc.wav"
    )
    assert (
        backup_key("prod", "dump", ID, datetime(2026, 11, 3, 2, 0, tzinfo=UTC))
        == "prod/backups/dump/2026/11/03/0190a5c4-7b1e-7c3a-9f00-123456789abc.dump"
    )
    assert (
        archive_key("dev", "generation_task", 2026, 5, ID)
        == f"dev/archive/generation_task/year=2026/month=05/{ID}.parquet"
    )
    assert prompts_key("stage", "ab" * 32, "csv") == f"stage/prompts/{'ab' * 32}.csv"
    assert gallery_prefix("prod", ID) == f"prod/gallery/{ID}/"
    assert data_docs_prefix("prod") == "prod/data-docs/"
    assert is_archived_key("prod/archive/audio/x.flac") and is_archived_key("archive/audio/x")
    assert not is_archived_key("prod/audio/x.flac")


def test_keys_written_before_scoping_map_to_their_environment() -> None:
    assert scoped_key("prod", "audio/a.flac") == "prod/audio/a.flac"
    assert scoped_key("prod", "archive/audio/a.flac") == "prod/archive/audio/a.flac"
    assert scoped_key("prod", "backups/prod/wal/1/x.zz") == "prod/backups/wal/1/x.zz"
    assert scoped_key("prod", "gallery/prod/j/index.html") == "prod/gallery/j/index.html"
    assert scoped_key("prod", "data-docs/prod/index.html") == "prod/data-docs/index.html"
    assert scoped_key("prod", "prompts/ab.csv") == "prod/prompts/ab.csv"
    # Another environment's backups, and keys already scoped, are not this one's to move.
    assert scoped_key("prod", "backups/dev/dump/x.dump") is None
    assert scoped_key("prod", "prod/audio/a.flac") is None


def test_builders_refuse_unknown_parts() -> None:
    with pytest.raises(InvalidKey):
        audio_key("prod", ID, "exe")
    with pytest.raises(InvalidKey):
        backup_key("prod", "weird", ID, datetime.now(UTC))
    with pytest.raises(InvalidKey):
        archive_key("prod", "generation_task", 2026, 13, ID)
    with pytest.raises(InvalidKey):
        archive_key("prod", "Robert'); DROP TABLE--", 2026, 1, ID)


def test_error_says_why() -> None:
    with pytest.raises(InvalidKey, match=r"contains '\.\.'"):
        validate_key("audio/../x")
    with pytest.raises(InvalidKey, match="starts with '/'"):
        validate_key("/audio/x")
    with pytest.raises(InvalidKey, match="characters outside"):
        validate_key("audio/Rainy Day.flac")
