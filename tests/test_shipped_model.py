"""The checkpoint shipped in the repository: verified on load, deterministic, in seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stave.generator.checkpoint import PACKAGED, file_sha256, model_card_path
from stave.generator.pipeline import GenerationRequest, StaveGenerator


@pytest.fixture(scope="module")
def shipped() -> StaveGenerator:
    return StaveGenerator.load(device="cpu")


def test_shipped_checkpoint_matches_its_model_card() -> None:
    card = json.loads(model_card_path(PACKAGED).read_text())
    assert file_sha256(PACKAGED) == card["sha256"]
    assert PACKAGED.stat().st_size <= 25 * 1024 * 1024
    for figure in (
        "key_accuracy",
        "tempo_accuracy",
        "sounds_alike_precision_at_10",
        "rtf",
        "device",
    ):
        assert figure in card["evaluation"]


def test_same_request_same_bytes_with_the_real_model(shipped: StaveGenerator) -> None:
    req = GenerationRequest(
        prompt="bright bell arpeggio in D minor, 96 bpm, with drums",
        duration_s=2.0,
        steps=4,
        seed=1234,
    )
    first, second = shipped.generate([req])[0], shipped.generate([req])[0]
    assert first.audio.tobytes() == second.audio.tobytes()
    assert first.audio.shape == (32_000,) and np.abs(first.audio).max() > 0.01  # not silent
    assert np.isclose(np.linalg.norm(first.embedding), 1.0, atol=1e-5)
