"""Generator errors, each with the error class tasks record (ARCHITECTURE.md "Task status")."""

from __future__ import annotations


class GeneratorError(Exception):
    """Base class: a one-line message that says what is wrong and where."""

    error_class = "model_error"


class CheckpointError(GeneratorError):
    """A checkpoint is missing, corrupted (sha256 mismatch) or not a Stave checkpoint."""


class InvalidRequest(GeneratorError, ValueError):
    """A generation request with a field out of range."""

    error_class = "input_invalid"


class ResourceExhausted(GeneratorError):
    """The device ran out of memory even after halving the batch."""

    error_class = "resource_exhausted"


class Interrupted(GeneratorError):
    """The caller's `interrupt` check asked generation to stop between denoiser steps: the
    batch was abandoned, nothing was made."""

    error_class = "internal"
