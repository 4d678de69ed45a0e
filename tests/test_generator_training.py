"""`train()` end to end at toy size: phases in order, resume, a loadable checkpoint and card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from generator.pipeline import GenerationRequest, StaveGenerator
from generator.pool import CorpusPool
from generator.train import TrainConfig, Trainer, pick_device, train

pytestmark = pytest.mark.slow

TOY = TrainConfig(
    corpus_clips=6,
    clip_seconds=3.0,
    ae_steps=3,
    ae_batch=2,
    embedding_steps=2,
    denoiser_steps=3,
    denoiser_batch=2,
    denoiser_frames=32,
    checkpoint_every=2,
)


def test_train_resumes_and_ships_a_loadable_checkpoint(tmp_path: Path) -> None:
    # Stop after the autoencoder, as if the run had been interrupted there.
    first = Trainer(tmp_path, TOY, pick_device("cpu"))
    first.run(
        CorpusPool.render(TOY.corpus_seed, TOY.corpus_clips, TOY.clip_seconds),
        lambda *_: None,
        until="autoencoder",
    )
    seen: list[tuple[str, int]] = []
    checkpoint = train(
        tmp_path, TOY, device="cpu", progress=lambda p, s, _t, _l: seen.append((p, s))
    )
    # The autoencoder was not trained again; the later phases ran in order.
    assert [p for p, _ in seen] == ["embedding"] * 2 + ["denoiser"] * 3
    card = json.loads(checkpoint.with_suffix(".json").read_text())
    assert card["sample_rate"] == 16_000 and card["latent"]["compression"] == 512
    assert card["corpus"] == {"seed": 0, "clips": 6, "clip_seconds": 3.0}
    assert set(card["final_losses"]) == {"autoencoder", "embedding", "denoiser"}
    generator = StaveGenerator.load(checkpoint, device="cpu")
    assert generator.sha256 == card["sha256"]
    clip = generator.generate(
        [
            GenerationRequest(
                prompt="bass melody in E minor, 70 bpm", duration_s=1.0, steps=2, seed=1
            )
        ]
    )[0]
    assert clip.audio.shape == (16_000,) and np.isfinite(clip.audio).all()
