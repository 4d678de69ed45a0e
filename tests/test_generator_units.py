"""The generator's parts on tiny inputs: synth, corpus, analysis, text, attention, sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stave.generator.analysis import (
    estimate_key,
    estimate_tempo,
    loudness_lufs,
    peak_dbfs,
    tempo_matches,
)
from stave.generator.corpus import (
    MODES,
    NOTE_NAMES,
    TIMBRES,
    parse_prompt,
    prompt_for,
    render,
    sample_labels,
)
from stave.generator.denoiser import (
    CLOCK_BEATS,
    Denoiser,
    DenoiserConfig,
    SelfAttention,
    beat_clock,
)
from stave.generator.sampler import guided, initial_noise, sample
from stave.generator.synth import HOP, N_NOISE, N_OSC, SAMPLE_RATE, synthesize
from stave.generator.text import parallel_key, tokenize


def test_synth_is_linear_and_deterministic() -> None:
    controls = torch.rand(2, N_OSC + N_NOISE, 40) * 0.01
    a, b = synthesize(controls), synthesize(controls)
    assert a.shape == (2, 40 * HOP) and torch.equal(a, b)
    assert torch.allclose(synthesize(controls * 3), a * 3, atol=1e-5)


def test_corpus_is_deterministic_and_labelled() -> None:
    labels = sample_labels(42)
    audio1, controls1 = render(labels, 2.0)
    audio2, _ = render(sample_labels(42), 2.0)
    assert np.array_equal(audio1, audio2)
    assert audio1.shape == (2 * SAMPLE_RATE,) and np.isclose(np.abs(audio1).max(), 0.8)
    # The corpus is exactly what the synth makes of its controls: a decoder can reproduce it.
    resynth = synthesize(torch.from_numpy(controls1)[None])[0].numpy()
    assert np.allclose(resynth, audio1, atol=1e-5)
    prompt = prompt_for(labels)
    assert f"{labels.bpm} bpm" in prompt and labels.key_name in prompt


def test_corpus_covers_every_label() -> None:
    seen = [sample_labels(s) for s in range(600)]
    assert {lab.timbre for lab in seen} == set(TIMBRES)
    assert {(lab.tonic, lab.mode) for lab in seen} == {(t, m) for t in range(12) for m in MODES}
    assert {lab.drums for lab in seen} == {True, False}
    assert min(lab.bpm for lab in seen) >= 60 and max(lab.bpm for lab in seen) <= 180


def test_parse_prompt() -> None:
    found = parse_prompt("bright bell arpeggio in D# minor, 96 bpm, with drums")
    assert found == {"tonic": NOTE_NAMES.index("D#"), "mode": "minor", "bpm": 96, "timbre": "bell"}
    assert parse_prompt("something ambient") == {}


def test_estimators_recover_corpus_labels() -> None:
    labels = [sample_labels(700_000 + i) for i in range(12)]
    keys = tempos = 0
    for lab in labels:
        audio, _ = render(lab, 8.0)
        keys += estimate_key(audio, SAMPLE_RATE) == (lab.tonic, lab.mode)
        tempos += tempo_matches(estimate_tempo(audio, SAMPLE_RATE), lab.bpm)
    assert keys >= 10 and tempos >= 10


def test_tempo_octave_errors_are_wrong() -> None:
    assert tempo_matches(100, 104) and not tempo_matches(200, 100) and not tempo_matches(50, 100)


def test_loudness_and_peak() -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE)).astype(
        np.float32
    )
    assert np.isclose(peak_dbfs(tone), 20 * np.log10(0.5), atol=0.01)
    assert -10 < loudness_lufs(tone, SAMPLE_RATE) < -8  # sine at -6 dBFS peak: about -9 LUFS
    assert loudness_lufs(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE) == -70.0


def test_tokenizer_numbers_keys_and_unknown_words() -> None:
    tokens = tokenize(["Bright bell in C# minor, 96 bpm", "", "zither solo"])
    assert (
        tokens.mask[0].sum() == 7 and tokens.values[0].max() == 96
    )  # bright bell in c# minor 96 bpm
    assert tokens.mask[1].sum() == 1  # the <null> token
    assert (tokens.ids[2][tokens.mask[2]] >= 60).all()  # unknown words hash into buckets
    assert torch.equal(tokenize(["zither solo"]).ids, tokenize(["zither solo"]).ids)


@pytest.mark.parametrize(
    ("prompt", "bpm", "key"),
    [
        ("bright bell arpeggio in D minor, 96 bpm, with drums", 96, (2, "minor")),
        ("organ chords in C# major at 120bpm", 120, (1, "major")),
        ("square lead, tempo 72, e flat major", 72, (3, "major")),
        ("bass in bb minor 140 BPM", 140, (10, "minor")),
        ("a slow organ tune", 0, None),  # "a" the article, no mode after it: no key
        ("a minor melody, 5 bpm", 0, (9, "minor")),  # 5 bpm is no tempo
        ("", 0, None),
    ],
)
def test_tokenizer_reads_the_tempo_and_key_a_prompt_names(
    prompt: str, bpm: int, key: tuple[int, str] | None
) -> None:
    tokens = tokenize([prompt])
    assert tokens.bpm.tolist() == [bpm]
    expected = 0 if key is None else 1 + 2 * key[0] + MODES.index(key[1])
    assert tokens.key.tolist() == [expected]


def test_beat_clock_counts_from_the_clip_start_and_is_off_without_a_tempo() -> None:
    bpm = torch.tensor([120.0, 0.0])
    whole = beat_clock(bpm, 300, 31.25)
    assert whole.shape == (2, 300, 2 * len(CLOCK_BEATS) + 1)
    # A crop starting at frame 50 sees the same clock as frames 50.. of the whole clip.
    crop = beat_clock(bpm, 100, 31.25, offset=torch.tensor([50, 50]))
    assert torch.allclose(crop, whole[:, 50:150], atol=1e-5)
    # At 120 bpm a beat is 15.625 frames, so 250 frames are 16 beats: every clock, the
    # four-bar phrase's included, has come round; 125 frames (8 beats) are half a phrase.
    assert torch.allclose(whole[0, 250], whole[0, 0], atol=1e-5)
    assert not torch.allclose(whole[0, 125], whole[0, 0], atol=1e-3)
    assert whole[0, 0, -1] == 1 and whole[1].abs().sum() == 0  # no tempo: all zeros


def test_the_parallel_key_swaps_the_mode_and_keeps_the_tonic() -> None:
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(latent_channels=4, dim=32, depth=1, heads=2, text_dim=32))
    prompts = ["bell in d minor", "bell in c# major", "bell"]
    twin = parallel_key(model.encode_text(tokenize(prompts)))
    assert twin.key.tolist() == tokenize(["d major", "c# minor", "bell"]).key.tolist()


def test_guidance_adds_the_contrast_term_only_where_asked() -> None:
    x, t = torch.zeros(3, 1, 2), torch.zeros(3)
    outputs = {"cond": 1.0, "uncond": 0.0, "contrast": 0.5}
    velocity = guided(
        lambda x, _t, branch: torch.full_like(x, outputs[branch]),
        guidance=torch.tensor([1.0, 3.0, 3.0]),
        contrast=torch.tensor([0.0, 0.0, 4.0]),
    )
    # cond 1, plus g * (cond - uncond) beyond it, plus c * (cond - contrast).
    assert velocity(x, t)[:, 0, 0].tolist() == [1.0, 3.0, 3.0 + 4 * 0.5]


def test_the_denoiser_reads_the_beat_clock_and_key() -> None:
    torch.manual_seed(0)
    cfg = DenoiserConfig(latent_channels=4, dim=32, depth=1, heads=2, text_dim=32, structure=True)
    model = Denoiser(cfg).eval()
    for layer in (model.out, model.final_mod):  # zero at initialisation: give them weights
        torch.nn.init.normal_(layer.weight, std=0.1)
    x, t = torch.randn(1, 4, 40), torch.full((1,), 0.5)
    with torch.no_grad():
        prompt = model.encode_text(tokenize(["organ in c major, 100 bpm"]))
        base = model(x, t, prompt)
        # Only the tempo or only the key changed, the word features left as they are.
        assert not torch.allclose(base, model(x, t, prompt._replace(bpm=torch.tensor([130.0]))))
        assert not torch.allclose(base, model(x, t, prompt._replace(key=torch.tensor([2]))))
        assert torch.equal(
            base, model(x, t, model.encode_text(tokenize(["organ in c major, 100 bpm"])))
        )
        # A crop that starts later in its clip sees a later beat phase.
        assert not torch.allclose(base, model(x, t, prompt, offset=torch.tensor([7])))


def test_linear_attention_matches_its_definition() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, "linear")
    x = torch.randn(2, 7, 16)
    q, k, v = attn.qkv(x).view(2, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    weights = q @ k.transpose(-1, -2)  # (B, H, N, N): the quadratic form it avoids
    naive = (weights / weights.sum(-1, keepdim=True)) @ v
    expected = attn.out(naive.transpose(1, 2).reshape(2, 7, 16))
    assert torch.allclose(attn(x, None), expected, atol=1e-5)


def test_padding_mask_hides_padded_frames() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, "linear")
    x = torch.randn(1, 5, 16)
    padded = torch.cat([x, torch.randn(1, 3, 16)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    assert torch.allclose(attn(padded, mask)[:, :5], attn(x, None), atol=1e-5)


def test_noise_depends_only_on_each_seed() -> None:
    alone = initial_noise([7], 4, 10)
    batch = initial_noise([3, 7, 9], 4, 10)
    assert torch.equal(alone[0], batch[1])


@pytest.mark.parametrize("scheduler", ["euler", "heun"])
def test_sampler_integrates_a_known_flow(scheduler: str) -> None:
    target = torch.full((1, 2, 3), 2.0)
    noise = torch.zeros(1, 2, 3)
    # Straight-line flow to `target`: v = (target - x) / (1 - t), exact for both solvers.
    result = sample(
        lambda x, t: (target - x) / (1 - t[:, None, None]).clamp_min(1e-3), noise, 8, scheduler
    )  # type: ignore[arg-type]
    assert torch.allclose(result, target, atol=1e-4)
    with pytest.raises(ValueError, match="unknown scheduler"):
        sample(lambda x, t: x, noise, 4, "ddim")  # type: ignore[arg-type]


def test_rotary_linear_attention_matches_its_definition() -> None:
    from stave.generator.denoiser import rotate

    torch.manual_seed(1)
    attn = SelfAttention(16, 2, "linear", rope=True)
    x = torch.randn(2, 9, 16)
    q, k, v = attn.qkv(x).view(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    numerator = rotate(q) @ rotate(k).transpose(-1, -2)
    denominator = (q @ k.transpose(-1, -2)).sum(-1, keepdim=True)
    expected = attn.out(((numerator @ v) / denominator).transpose(1, 2).reshape(2, 9, 16))
    assert torch.allclose(attn(x, None), expected, atol=1e-5)
    # Rotation preserves norms, and position 0 is left as it is.
    assert torch.allclose(rotate(q).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rotate(q)[..., 0, :], q[..., 0, :])


@pytest.mark.parametrize("rate", [16000, 44100, 11025])
@pytest.mark.parametrize(
    "signal",
    ["sine-30hz", "sine-60hz", "sine-1khz", "sine-8khz", "noise", "bursts"],
)
def test_loudness_is_bs1770_4_lufs_as_pyloudnorm_measures_it(rate: int, signal: str) -> None:
    """True LUFS: K-weighted (the -14 dB the high pass takes off 30 Hz, the +4 dB shelf above
    1.5 kHz), gated; against pyloudnorm, the reference implementation, to 0.01 LU. A 1 kHz
    sine alone could not tell K-weighting from none."""
    import pyloudnorm

    rng = np.random.default_rng(7)
    t = np.arange(int(3.3 * rate)) / rate
    made = {
        "sine-30hz": 0.5 * np.sin(2 * np.pi * 30 * t),
        "sine-60hz": 0.3 * np.sin(2 * np.pi * 60 * t),
        "sine-1khz": 0.25 * np.sin(2 * np.pi * 1000 * t),
        "sine-8khz": 0.2 * np.sin(2 * np.pi * min(8000, rate / 2.5) * t),
        "noise": 0.1 * rng.standard_normal(len(t)),
        # Loud bursts and near-silence: the relative gate drops the quiet blocks.
        "bursts": 0.3 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 0.7 * t) > 0.6),
    }[signal].astype(np.float32)
    reference = pyloudnorm.Meter(rate).integrated_loudness(made.astype(np.float64))
    assert abs(loudness_lufs(made, rate) - reference) < 0.01


def test_k_weighting_changes_what_an_unweighted_meter_would_say() -> None:
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    low = (0.5 * np.sin(2 * np.pi * 30 * t)).astype(np.float32)
    unweighted = -0.691 + 10 * np.log10(np.mean(low.astype(np.float64) ** 2))
    assert loudness_lufs(low, SAMPLE_RATE) < unweighted - 5  # 30 Hz counts for far less


def test_the_models_and_the_generator_name_the_same_loudness_method() -> None:
    from stave.generator.analysis import LOUDNESS_METHOD
    from stave.models.assets import LOUDNESS_METHOD as RECORDED

    assert LOUDNESS_METHOD == RECORDED == "bs1770-4"
