"""Stave's exceptions: each carries a one-line message fit for an operator and an error class.

The error class is the vocabulary task records use (ARCHITECTURE.md "Task status"), so a failure
raised anywhere can be stored on a task without guessing.
"""

from __future__ import annotations

from typing import Literal, get_args

# The one vocabulary of failure classes: task records store these (the database checks it,
# models/generation.py), reports group by them, and every StaveError carries one.
ErrorClass = Literal[
    "input_invalid",
    "resource_exhausted",
    "storage_unavailable",
    "model_error",
    "validation_failed",
    "timeout",
    "internal",
]
ERROR_CLASSES: tuple[str, ...] = get_args(ErrorClass)


def first_line(err: BaseException | None, default: str | None = None) -> str:
    """An exception's first line of text, at most 2,000 characters: for one-line messages
    built around another library's error. With no text: `default`, else the type's name."""
    text_ = str(err).strip() if err is not None else ""
    if not text_:
        return type(err).__name__ if default is None else default
    return text_.splitlines()[0][:2000]


class StaveError(Exception):
    """Base class: the message is one line that says what is wrong and where."""

    error_class: ErrorClass = "internal"
    retryable: bool = False
    # The CLI's exit code for it (the README's "Exit codes"): 1, or 3 for runs whose clips failed.
    exit_code: int = 1


class ConfigError(StaveError):
    """Settings are missing, malformed or unsafe for the chosen environment."""

    error_class = "input_invalid"


class DatabaseUnavailable(StaveError):
    """PostgreSQL cannot be reached or started."""

    error_class = "storage_unavailable"
    retryable = True


class StorageUnavailable(StaveError):
    """The object store cannot be reached or answered with a server error."""

    error_class = "storage_unavailable"
    retryable = True


class InvalidInput(StaveError, ValueError):
    """An input file or parameter that cannot be read as what it claims to be."""

    error_class = "input_invalid"


class NotFound(StaveError, LookupError):
    """A job, task or asset id that has no record."""

    error_class = "input_invalid"


class InvalidKey(StaveError, ValueError):
    """An object key that is not made only of server ids and safe separators."""

    error_class = "input_invalid"


class ObjectNotFound(StaveError, KeyError):
    """No object at that key."""

    error_class = "storage_unavailable"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object not found"


class ObjectCorrupted(StaveError):
    """An object's bytes do not match the sha256 recorded for it."""

    error_class = "storage_unavailable"
