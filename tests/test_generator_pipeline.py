"""The inference API on a tiny random checkpoint: shapes, determinism, verification, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stave.generator.acestep import AceStepGenerator, acestep_params
from stave.generator.checkpoint import model_card_path
from stave.generator.errors import CheckpointError, GeneratorError, InvalidRequest
from stave.generator.pipeline import GenerationRequest, StaveGenerator
from tests.utils.assets import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def generator(tiny_checkpoint: Path) -> StaveGenerator:
    return StaveGenerator.load(tiny_checkpoint, device="cpu")


def request(seed: int | None = 5, **overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "prompt": "warm organ chords in A minor, 90 bpm",
        "duration_s": 1.0,
        "steps": 2,
        "seed": seed,
        **overrides,
    }
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def test_generate_returns_clips_with_unit_embeddings(generator: StaveGenerator) -> None:
    clips = generator.generate([request(1), request(2, duration_s=1.5), request(None)])
    assert [len(c.audio) for c in clips] == [16_000, 24_000, 16_000]
    for clip in clips:
        assert clip.sample_rate == 16_000 and clip.audio.dtype == np.float32
        assert clip.embedding.shape == (512,) and np.isclose(
            np.linalg.norm(clip.embedding), 1, atol=1e-5
        )
        assert set(clip.timings) == {"conditioning", "diffusion", "decode", "embed"}
        assert (clip.device, clip.dtype) == ("cpu", "float32")
        # A clip's embedding is its audio's: what search computes for the file, and a backfill.
        assert np.allclose(generator.embed_audio(clip.audio, 16_000), clip.embedding, atol=1e-5)
    many = generator.embed_many([(c.audio, 16_000) for c in clips])
    assert np.allclose(many, np.stack([c.embedding for c in clips]), atol=1e-5)
    assert clips[0].seed == 1 and 0 <= clips[2].seed < 2**63


def test_same_request_gives_identical_bytes(generator: StaveGenerator) -> None:
    first = generator.generate([request(11, scheduler="heun")])[0]
    again = generator.generate([request(11, scheduler="heun")])[0]
    assert first.audio.tobytes() == again.audio.tobytes()
    assert first.embedding.tobytes() == again.embedding.tobytes()
    other = generator.generate([request(12, scheduler="heun")])[0]
    assert other.audio.tobytes() != first.audio.tobytes()


def test_a_clip_does_not_depend_on_its_batch(generator: StaveGenerator) -> None:
    alone = generator.generate([request(21)])[0]
    batch = generator.generate([request(20), request(21), request(22)])[1]
    assert np.array_equal(alone.audio, batch.audio)


@pytest.mark.parametrize(
    "field,value",
    [
        ("prompt", ""),
        ("prompt", "x" * 513),
        ("duration_s", 0.5),
        ("duration_s", float("nan")),
        ("steps", 0),
        ("steps", 201),
        ("guidance", 31.0),
        ("guidance", float("inf")),
        ("scheduler", "ddim"),
        ("seed", -1),
        ("seed", 2**63),
        ("lyrics", "l" * 4097),
    ],
)
def test_invalid_requests_name_the_field(
    generator: StaveGenerator, field: str, value: object
) -> None:
    fields = {"prompt": "a bell", "duration_s": 1.0, "steps": 2, field: value}
    with pytest.raises(InvalidRequest, match=f"field {field} "):
        generator.generate([GenerationRequest(**fields)])  # type: ignore[arg-type]


def test_embed_audio_at_any_rate_and_layout(generator: StaveGenerator, tmp_path: Path) -> None:
    import soundfile

    stereo = np.random.default_rng(0).standard_normal((44_100, 2)).astype(np.float32) * 0.1
    vector = generator.embed_audio(stereo, 44_100)
    assert vector.shape == (512,) and np.isclose(np.linalg.norm(vector), 1, atol=1e-5)
    soundfile.write(tmp_path / "clip.flac", stereo, 44_100)
    assert np.allclose(generator.embed_file(tmp_path / "clip.flac"), vector, atol=1e-3)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(InvalidRequest, match=r"bad\.wav"):
        generator.embed_file(tmp_path / "bad.wav")


def test_checkpoint_is_verified(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        StaveGenerator.load(tmp_path / "missing.pt")
    corrupted = tmp_path / "tiny.pt"
    data = bytearray(tiny_checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    model_card_path(corrupted).write_text(model_card_path(tiny_checkpoint).read_text())
    with pytest.raises(CheckpointError, match="corrupted"):
        StaveGenerator.load(corrupted)
    model_card_path(corrupted).unlink()
    with pytest.raises(CheckpointError, match="no model card"):
        StaveGenerator.load(corrupted)


def test_acestep_mapping() -> None:
    req = GenerationRequest(
        prompt="lofi piano",
        lyrics="[verse] la la",
        duration_s=30,
        steps=60,
        guidance=15.0,
        scheduler="heun",
        seed=3,
    )
    assert acestep_params(req, 3) == {
        "prompt": "lofi piano",
        "lyrics": "[verse] la la",
        "audio_duration": 30.0,
        "infer_step": 60,
        "guidance_scale": 15.0,
        "scheduler_type": "heun",
        "manual_seeds": [3],
    }
    assert acestep_params(GenerationRequest(prompt="x"), 1)["lyrics"] == ""


def test_acestep_without_package_or_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        AceStepGenerator(tmp_path / "nope", embedder=None)
    with pytest.raises(GeneratorError, match=r"pip install 'stave\[acestep\]'"):
        AceStepGenerator(tmp_path, embedder=None)


@pytest.mark.gpu
def test_cuda_generation_is_deterministic_in_bf16(tiny_checkpoint: Path) -> None:
    gen = StaveGenerator.load(tiny_checkpoint, device="cuda")
    a, b = gen.generate([request(3)])[0], gen.generate([request(3)])[0]
    assert a.dtype == "bfloat16" and a.audio.tobytes() == b.audio.tobytes()


def test_batched_decoding_is_close_to_clip_by_clip_and_replays_exactly(
    tiny_checkpoint: Path, generator: StaveGenerator
) -> None:
    """CUDA decodes and embeds a batch at once; forced here on the CPU: the same clips within
    float rounding, and `run_batch` of the same batch makes the same bytes."""
    batched = StaveGenerator.load(tiny_checkpoint, device="cpu", batched_decode=True)
    requests = [request(30), request(31, duration_s=1.5), request(32)]
    one_by_one = generator.generate(requests)
    together = batched.generate(requests)
    for a, b in zip(one_by_one, together, strict=True):
        assert a.audio.shape == b.audio.shape
        np.testing.assert_allclose(a.audio, b.audio, atol=1e-4)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-4)
    again = batched.run_batch(list(together[0].batch))
    assert again[0].audio.tobytes() == together[0].audio.tobytes()


def test_batches_follow_max_batch_and_out_of_memory_halves_them(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from stave.generator.errors import ResourceExhausted

    small = StaveGenerator.load(tiny_checkpoint, device="cpu", max_batch=3)
    made = small.generate([request(40 + i) for i in range(7)])
    assert [len(c.batch) for c in made] == [3, 3, 3, 3, 3, 3, 1]

    real_make = small._make
    sizes: list[int] = []

    def tight(requests: list[GenerationRequest], seeds: list[int], frames: int) -> object:
        sizes.append(len(requests))
        if len(requests) > 1:  # the device holds one clip at a time
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_make(requests, seeds, frames)

    monkeypatch.setattr(small, "_make", tight)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    made = small.generate([request(50 + i) for i in range(3)])
    assert [c.seed for c in made] == [50, 51, 52] and all(len(c.batch) == 1 for c in made)
    assert sizes == [3, 1, 2, 1, 1]
    monkeypatch.setattr(
        small, "_make", lambda *_: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("sim"))
    )
    with pytest.raises(ResourceExhausted, match=r"one \d+-frame clip"):
        small.generate([request(60), request(61)])


@pytest.mark.parametrize("structure", [True, False])
def test_the_denoiser_s_per_batch_constants_change_no_bit(structure: bool) -> None:
    """The sampler prepares each branch's text constants once per batch and the time's
    conditioning once per step (`Denoiser.prepare`, `embed_time`): the velocity is the one the
    plain call makes, bit for bit, with and without the structure inputs (tempo, key)."""
    import torch

    from stave.generator.denoiser import Denoiser, DenoiserConfig
    from stave.generator.text import tokenize

    torch.manual_seed(7)
    model = Denoiser(DenoiserConfig(structure=structure)).eval()
    for p in model.parameters():  # no zero-initialised layer hides a difference
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        text = model.encode_text(tokenize(["warm organ chords in A minor, 90 bpm", "drone"]))
        x = torch.randn(2, model.cfg.latent_channels, 40)
        t = torch.tensor([0.25, 0.25])
        plain = model(x, t, text)
        prepared = model(x, t, text, prepared=model.prepare(text, 40), time=model.embed_time(t))
    assert torch.equal(plain, prepared)


def test_a_batch_left_on_the_device_gives_the_clips_generate_gives(
    generator: StaveGenerator,
) -> None:
    """`generate_batches` (the drain's) and `generate` make the same clips; each batch says
    which request each row is, and on the CPU leaves the samples to the host to measure."""
    requests = [request(40), request(41, duration_s=1.5), request(42)]
    clips = generator.generate(requests)
    batches = generator.generate_batches(requests)
    assert sorted(p for b in batches for p in b.positions) == [0, 1, 2]
    for batch in batches:
        assert batch.levels is None and batch.audio.shape[0] == len(batch.positions)
        for row, position in enumerate(batch.positions):
            length = batch.lengths[row]
            assert batch.audio[row, :length].numpy().tobytes() == clips[position].audio.tobytes()
