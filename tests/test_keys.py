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
    validate_key,
)

ID = uuid.UUID("0190a5c4-7b1e-7c3a-9f00-123456789abc")


def test_exact_paths() -> None:
    assert audio_key(ID) == "audio/0190a5c4-7b1e-7c3a-9f00-123456789abc.flac"
    assert archived_audio_key(ID, "wav") == "archive/audio/0190a5c4-7b1e-7c3a-9f00-123456789abc.wav"
    assert (
        backup_key("prod", "dump", ID, datetime(2026, 11, 3, 2, 0, tzinfo=UTC))
        == "backups/prod/dump/2026/11/03/0190a5c4-7b1e-7c3a-9f00-123456789abc.dump"
    )
    assert (
        archive_key("generation_task", 2026, 5, ID)
        == "archive/generation_task/year=2026/month=05/0190a5c4-7b1e-7c3a-9f00-123456789abc.parquet"
    )


def test_builders_refuse_unknown_parts() -> None:
    with pytest.raises(InvalidKey):
        audio_key(ID, "exe")
    with pytest.raises(InvalidKey):
        backup_key("prod", "weird", ID, datetime.now(UTC))
    with pytest.raises(InvalidKey):
        archive_key("generation_task", 2026, 13, ID)
    with pytest.raises(InvalidKey):
        archive_key("Robert'); DROP TABLE--", 2026, 1, ID)


def test_error_says_why() -> None:
    with pytest.raises(InvalidKey, match=r"contains '\.\.'"):
        validate_key("audio/../x")
    with pytest.raises(InvalidKey, match="starts with '/'"):
        validate_key("/audio/x")
    with pytest.raises(InvalidKey, match="characters outside"):
        validate_key("audio/Rainy Day.flac")
