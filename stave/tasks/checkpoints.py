"""Trained checkpoints in the object store: listing them, and fetching one with its card.

The training flow puts each checkpoint and its model card under `<env>/models/`, named by the
checkpoint's sha256 (`stave-small-<sha256[:16]>.pt` and `.json`). A worker host fetches one
onto its disk (`stave models fetch`), checked against the card's sha256 before it is moved
into place, and points `STAVE_CHECKPOINT` at it (docs/runbooks.md, "A new encoder").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stave.infra.errors import InvalidInput, NotFound, ObjectCorrupted, ObjectNotFound, first_line
from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.keys import model_key, models_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredModel:
    sha256: str
    checkpoint_key: str
    card_key: str
    bytes: int
    card: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "encoder_version": f"stave-ae-{self.sha256[:12]}",
            "checkpoint_key": self.checkpoint_key,
            "bytes": self.bytes,
            "final_losses": self.card.get("final_losses", {}),
            "evaluation": self.card.get("evaluation"),
        }


def stored_models(store: ObjectStore, env: str) -> list[StoredModel]:
    """Every checkpoint of the environment whose card is in the store, in key order."""
    found = []
    for info in store.list(models_prefix(env)):
        if not info.key.endswith(".json"):
            continue
        # One bad card must not hide every other checkpoint: it is logged and left out.
        try:
            card = json.loads(store.get_bytes(info.key))
            sha256 = str(card["sha256"])
            checkpoint_key = model_key(env, sha256, "pt")
            size = store.stat(checkpoint_key).size
        except (ValueError, KeyError, TypeError, ObjectCorrupted, ObjectNotFound) as err:
            log.warning("model card %s left out: %s", info.key, first_line(err))
            continue
        found.append(StoredModel(sha256, checkpoint_key, info.key, size, card))
    return found


def fetch_model(store: ObjectStore, env: str, sha_prefix: str, out_dir: Path) -> Path:
    """The checkpoint whose sha256 starts with `sha_prefix`, with its card, into `out_dir`;
    the checkpoint's path. Checked against the card's sha256 before it is renamed into place,
    so a half-fetched or corrupted file never sits where STAVE_CHECKPOINT would find it."""
    prefix = sha_prefix.lower()
    if len(prefix) < 6:
        raise InvalidInput(f"model {sha_prefix!r}: give at least 6 characters of its sha256")
    models = stored_models(store, env)
    matches = [m for m in models if m.sha256.startswith(prefix)]
    if not matches:
        known = ", ".join(m.sha256[:12] for m in models) or "none"
        raise NotFound(
            f"no checkpoint {sha_prefix} under {models_prefix(env)} in {store.describe()} "
            f"(stored: {known}; `stave models list`)"
        )
    if len(matches) > 1:
        raise InvalidInput(f"model {sha_prefix!r} matches {len(matches)} checkpoints: give more")
    (model,) = matches
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"stave-small-{model.sha256[:16]}.pt"
    # The card beside the checkpoint is what loading checks the checkpoint against: both are
    # written under names of their own and renamed into place only once checked.
    card = _fetched(out_dir, [store.get_bytes(model.card_key)])
    weights = _fetched(
        out_dir, store.iter_chunks(model.checkpoint_key, expected_sha256=model.sha256), card
    )
    os.replace(card, target.with_suffix(".json"))
    os.replace(weights, target)
    return target


def _fetched(out_dir: Path, chunks: Iterable[bytes], *also: Path) -> Path:
    """`chunks` in a new hidden file of `out_dir`, synced; on any failure it (and `also`) is
    removed."""
    descriptor, name = tempfile.mkstemp(dir=out_dir, prefix=".fetch-")
    partial = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        partial.chmod(0o644)  # not a secret: other users of the host may load it
    except BaseException:
        for path in (partial, *also):
            path.unlink(missing_ok=True)
        raise
    return partial
