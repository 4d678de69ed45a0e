"""Which encoder makes a version's embeddings, and loading it from a checkpoint on this machine.

A version names a checkpoint's autoencoder (`stave-ae-<sha256[:12]>`): the configured one, a
file given by path, or a registered model version's checkpoint that is on this disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput
from stave.infra.settings import Settings
from stave.tasks.inference import load_model
from stave.tasks.vector_index import check_encoder_version


class Encoder(Protocol):
    @property
    def version(self) -> str: ...

    def embed_many(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray: ...


@dataclass(frozen=True)
class StaveEncoder:
    """The built-in autoencoder's embedding head, named by its checkpoint."""

    generator: Any  # generator.pipeline.StaveGenerator
    version: str

    def embed_many(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        return np.asarray(self.generator.embed_many(clips))


def load_encoder(
    engine: Engine, settings: Settings, version: str | None, checkpoint: str | None
) -> StaveEncoder:
    """The encoder for `version`: the configured checkpoint's, a given checkpoint's, or that of
    a registered model version whose checkpoint file is on this machine."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise InvalidInput(f"checkpoint {checkpoint}: no such file")
        model = load_model(settings, path)
    else:
        model = load_model(settings)
        if version and version != model.encoder_version:
            path = _registered_checkpoint(engine, version)
            model = load_model(settings, path)
    if version and version != model.encoder_version:
        raise InvalidInput(
            f"encoder version {version}: the checkpoint given makes {model.encoder_version}"
        )
    builtin = getattr(model.generator, "embedder", None) or model.generator
    return StaveEncoder(generator=builtin, version=model.encoder_version)


def _registered_checkpoint(engine: Engine, version: str) -> Path:
    check_encoder_version(version)
    sha12 = version.removeprefix("stave-ae-")
    with engine.connect() as conn:
        uris = conn.execute(
            text("SELECT checkpoint_uri FROM model_version WHERE checkpoint_sha256 LIKE :p"),
            {"p": sha12 + "%"},
        ).scalars()
        for uri in uris:
            if uri.startswith("file://") and Path(uri.removeprefix("file://")).is_file():
                return Path(uri.removeprefix("file://"))
    raise InvalidInput(
        f"encoder version {version}: no checkpoint for it on this machine; "
        "pass --checkpoint PATH (or the checkpoint parameter)"
    )
