"""Sorting a failure into the error classes a task record stores (ARCHITECTURE.md "Task status")."""

from __future__ import annotations

from stave.generator.errors import GeneratorError, InvalidRequest, ResourceExhausted
from stave.infra.db import translate_db_error
from stave.infra.errors import StaveError, first_line


def classify(err: BaseException) -> tuple[str, str]:
    """(error class, one-line message) for an exception raised while making a batch."""
    message = first_line(err, default="")
    if isinstance(err, StaveError):
        return err.error_class, message
    module = type(err).__module__
    name = type(err).__name__
    if name == "OutOfMemoryError" or isinstance(err, MemoryError):
        return "resource_exhausted", message or "out of memory"
    if isinstance(err, InvalidRequest):
        return "input_invalid", message
    if isinstance(err, ResourceExhausted):
        return "resource_exhausted", message
    if isinstance(err, GeneratorError) or module.startswith("stave.generator"):
        return "model_error", message
    if isinstance(err, TimeoutError):
        return "timeout", message or "timed out"
    if module.startswith(("torch", "minio", "urllib3")):
        return ("model_error" if module.startswith("torch") else "storage_unavailable"), message
    if module.startswith(("sqlalchemy", "psycopg")):
        translated = translate_db_error(err)
        return "internal", first_line(translated, default="") if translated else message
    return "internal", f"{name}: {message}" if message else name
