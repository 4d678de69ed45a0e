"""Checkpoint files: one torch file of state dicts and plain data, verified by sha256.

The expected sha256 comes from the model card beside the checkpoint (`<name>.json`), or from
the caller (a model_version record); a mismatch refuses to load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from stave.generator import PACKAGED_CHECKPOINT
from stave.generator.errors import CheckpointError

FORMAT = "stave-checkpoint/1"
PACKAGED = PACKAGED_CHECKPOINT


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_card_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> str:
    """Write atomically; return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return file_sha256(path)


def load_checkpoint(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Load and verify; CheckpointError with a one-line reason on any problem."""
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found at {path}: train one with `stave train` or point "
            "STAVE_CHECKPOINT at a file"
        )
    if expected_sha256 is None:
        card = model_card_path(path)
        if not card.is_file():
            raise CheckpointError(
                f"checkpoint {path} has no model card {card.name} with its sha256"
            )
        try:
            expected_sha256 = str(json.loads(card.read_text())["sha256"])
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"model card {card} is unreadable or has no sha256") from err
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: sha256 {actual[:12]}… does not match the "
            f"recorded {expected_sha256[:12]}…"
        )
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means "not a usable checkpoint"
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(err).__name__}") from err
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    payload["sha256"] = actual
    return payload
