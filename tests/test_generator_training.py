"""`train()` end to end at toy size: phases in order, resume, a loadable checkpoint and card."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from stave.generator.pipeline import GenerationRequest, StaveGenerator
from stave.generator.pool import CorpusPool
from stave.generator.train import Trainer, pick_device, train
from stave.generator.train_config import TrainConfig
from stave.infra.settings import Settings
from tests.utils.assets import write_tiny_checkpoint

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


def test_a_new_denoiser_can_keep_an_earlier_checkpoints_autoencoder(tmp_path: Path) -> None:
    from stave.generator.checkpoint import load_checkpoint
    from stave.generator.errors import CheckpointError

    first = train(tmp_path / "first", TOY, device="cpu")
    seen: list[str] = []
    second = train(
        tmp_path / "second",
        dataclasses.replace(TOY, seed=1),
        device="cpu",
        progress=lambda p, *_: seen.append(p),
        autoencoder_from=first,
    )
    assert seen == ["denoiser"] * TOY.denoiser_steps  # the autoencoder was not trained again
    old, new = load_checkpoint(first), load_checkpoint(second)
    assert all(torch.equal(old["autoencoder"][k], v) for k, v in new["autoencoder"].items())
    assert not torch.equal(old["denoiser"]["out.weight"], new["denoiser"]["out.weight"])
    card = json.loads(second.with_suffix(".json").read_text())
    assert card["autoencoder_from"] == {"checkpoint": first.name, "sha256": old["sha256"]}
    assert card["loss_history"]["autoencoder"]  # the autoencoder's figures come along
    # An autoencoder of another shape is refused in one line, before any training.
    other = write_tiny_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match=r"has autoencoder .* not the configured"):
        train(tmp_path / "third", TOY, device="cpu", autoencoder_from=other)


@pytest.mark.integration
def test_the_training_flow_publishes_checkpoint_and_card(
    prefect_api: str, stave_env: Callable[..., Settings], tmp_path: Path
) -> None:
    from stave.flows.train import train_generator
    from stave.generator.checkpoint import load_checkpoint
    from stave.infra.errors import NotFound, ObjectCorrupted
    from stave.infra.objectstore import make_object_store
    from stave.tasks.checkpoints import fetch_model, stored_models

    settings = stave_env(home=tmp_path / "home")
    toy = {
        "ae_batch": TOY.ae_batch,
        "denoiser_batch": TOY.denoiser_batch,
        "denoiser_frames": TOY.denoiser_frames,
        "checkpoint_every": TOY.checkpoint_every,
    }
    result = train_generator(
        run_name="toy",
        clips=TOY.corpus_clips,
        clip_seconds=TOY.clip_seconds,
        ae_steps=TOY.ae_steps,
        embedding_steps=TOY.embedding_steps,
        denoiser_steps=TOY.denoiser_steps,
        device="cpu",
        overrides=toy,
    )
    store = make_object_store(settings)
    stored = store.get_bytes(result["object_key"], expected_sha256=result["sha256"])
    local = settings.data_dir / "models" / "toy" / "stave-small.pt"
    assert stored == local.read_bytes()
    card = json.loads(store.get_bytes(result["model_card_key"]))
    assert card["sha256"] == result["sha256"] and card["corpus"]["clips"] == TOY.corpus_clips
    assert load_checkpoint(local, expected_sha256=result["sha256"]) is not None

    # A worker host fetches it by its sha256's first characters, card beside it; loading it
    # checks it against the card. A corrupted object is never put where loading would look.
    assert result["object_key"].startswith(f"{settings.env}/models/stave-small-")
    (listed,) = stored_models(store, settings.env)
    assert listed.sha256 == result["sha256"] and listed.bytes == local.stat().st_size
    fetched = fetch_model(store, settings.env, result["sha256"][:12], tmp_path / "fetched")
    assert fetched.read_bytes() == local.read_bytes()
    assert load_checkpoint(fetched) is not None  # found its card, sha256 matched
    with pytest.raises(NotFound, match="no checkpoint abcdef12"):
        fetch_model(store, settings.env, "abcdef12", tmp_path / "other")
    rotten = store.base / result["object_key"]  # type: ignore[attr-defined]
    rotten.write_bytes(rotten.read_bytes()[:-1] + b"x")
    with pytest.raises(ObjectCorrupted):
        fetch_model(store, settings.env, result["sha256"], tmp_path / "rotten")
    assert list((tmp_path / "rotten").iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"denoiser_btach": 4}, "unknown training setting 'denoiser_btach'"),
        ({"denoiser_batch": "4"}, "denoiser_batch must be int"),
        ({"rope": 1}, "rope must be bool"),
    ],
)
def test_training_overrides_are_checked_by_name_and_type(
    overrides: dict[str, object], message: str
) -> None:
    from stave.flows.train import train_config
    from stave.infra.errors import InvalidInput

    with pytest.raises(InvalidInput, match=message):
        train_config(8, 3.0, 1, 1, 1, 0, overrides)
    assert train_config(8, 3.0, 1, 1, 1, 0, {"denoiser_lr": 1}).denoiser_lr == 1
