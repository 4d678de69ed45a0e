"""Sorting a failure into the error classes a task record stores (ARCHITECTURE.md)."""

from __future__ import annotations

from infra.errors import StaveError


def classify(err: BaseException) -> tuple[str, str]:
    """(error class, one-line message) for an exception raised while making a batch."""
    message = _first_line(err)
    if isinstance(err, StaveError):
        return err.error_class, message
    module = type(err).__module__
    name = type(err).__name__
    if name == "OutOfMemoryError" or isinstance(err, MemoryError):
        return "resource_exhausted", message or "out of memory"
    if module.startswith("generator"):
        from generator.errors import InvalidRequest, ResourceExhausted

        if isinstance(err, InvalidRequest):
            return "input_invalid", message
        if isinstance(err, ResourceExhausted):
            return "resource_exhausted", message
        return "model_error", message
    if isinstance(err, TimeoutError):
        return "timeout", message or "timed out"
    if module.startswith(("torch", "minio", "urllib3")):
        return ("model_error" if module.startswith("torch") else "storage_unavailable"), message
    if module.startswith(("sqlalchemy", "psycopg")):
        from infra.db import translate_db_error

        translated = translate_db_error(err)
        return "internal", _first_line(translated) if translated else message
    return "internal", f"{name}: {message}" if message else name


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:2000] if text else ""
