"""Test data for embeddings work: a tiny checkpoint (a second encoder version) and published
audio assets placed in a time window of their own, so tests sharing the session database can
scope their backfills to their own rows."""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.generator.autoencoder import Autoencoder, AutoencoderConfig
from stave.generator.checkpoint import model_card_path, save_checkpoint
from stave.generator.denoiser import Denoiser, DenoiserConfig
from stave.infra.objectstore import ObjectStore
from stave.infra.objectstore.keys import audio_key
from stave.models.base import new_id
from stave.tasks.storage import encode_flac

TINY_AE = AutoencoderConfig(width=8)
TINY_DENOISER = DenoiserConfig(
    latent_channels=TINY_AE.latent_channels, dim=32, depth=1, heads=2, text_dim=32, structure=True
)


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random tiny model with its model card: a real checkpoint, and a distinct encoder."""
    torch.manual_seed(seed)
    ae, denoiser = Autoencoder(TINY_AE), Denoiser(TINY_DENOISER)
    sha = save_checkpoint(
        path,
        {
            "autoencoder_config": TINY_AE.as_dict(),
            "denoiser_config": TINY_DENOISER.as_dict(),
            "autoencoder": ae.state_dict(),
            "denoiser": denoiser.state_dict(),
            "latent_mean": torch.zeros(TINY_AE.latent_channels),
            "latent_std": torch.ones(TINY_AE.latent_channels),
            "meta": {"name": "tiny", "seed": seed},
        },
    )
    model_card_path(path).write_text(json.dumps({"sha256": sha}))
    return path


# Each test session (one per xdist worker) has its own database: a day per call is enough
# to keep tests apart. (A random day of 3,000 met another test's 30 rows now and then.)
_DAYS = itertools.count()


def window() -> tuple[datetime, datetime]:
    """A day of its own from 2001 on, for one test's rows."""
    start = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=next(_DAYS))
    return start, start + timedelta(days=1)


@dataclass(frozen=True)
class Asset:
    id: uuid.UUID
    created_at: datetime
    object_key: str
    sha256: str


def tone(i: int, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    freq = 110.0 * 2 ** ((i % 24) / 12)
    return 0.3 * np.sin(2 * np.pi * freq * t) * (1 + (i % 3) * np.sin(2 * np.pi * 2 * t)) / 2


def make_assets(
    engine: Engine,
    store: ObjectStore,
    n: int,
    start: datetime,
    *,
    user_id: str = "tester",
    model_version_id: uuid.UUID | None = None,
    audios: list[np.ndarray] | None = None,
) -> list[Asset]:
    """`n` published-looking assets: FLAC objects in the store and their rows, one second
    apart from `start` (no generation task: the backfill reads only assets)."""
    import hashlib

    made = []
    with engine.begin() as conn:
        for i in range(n):
            asset_id = new_id()
            audio = audios[i] if audios is not None else tone(i)
            data = encode_flac(np.asarray(audio, dtype=np.float32), 16000)
            key = audio_key("dev", asset_id)
            store.put_bytes(key, data)
            sha = hashlib.sha256(data).hexdigest()
            created = start + timedelta(seconds=i)
            conn.execute(
                text(
                    "INSERT INTO audio_asset (id, user_id, model_version_id, object_key, sha256, "
                    "bytes, format, sample_rate, channels, duration_s, created_at) VALUES "
                    "(:id, :u, :mv, :k, :sha, :b, 'flac', 16000, 1, :d, :c)"
                ),
                {
                    "id": asset_id,
                    "u": user_id,
                    "mv": model_version_id,
                    "k": key,
                    "sha": sha,
                    "b": len(data),
                    "d": len(audio) / 16000,
                    "c": created,
                },
            )
            made.append(Asset(asset_id, created, key, sha))
    return made


def embedding_counts(engine: Engine, assets: list[Asset], version: str) -> dict[uuid.UUID, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.id, count(e.id) FROM audio_asset a LEFT JOIN latent_embedding e "
                "ON e.asset_id = a.id AND e.encoder_version = :v WHERE a.id = ANY(:ids) "
                "GROUP BY a.id"
            ),
            {"v": version, "ids": [a.id for a in assets]},
        ).all()
    return {r[0]: r[1] for r in rows}
