"""Encoding and measuring a clip without decoding it again: the bytes are those libsndfile
makes of the float samples, and the measurements those of the decoded file; the 16-bit
samples and levels the device computes for a whole batch (`generator/levels.py`) are the
host's, bit for bit (samples, peak) or to float rounding (loudness)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch

from stave.generator import levels
from stave.generator.analysis import loudness_lufs, peak_dbfs
from stave.tasks.storage import encode_flac, measure, measure_pcm, quantize


def floats_written(audio: np.ndarray, sample_rate: int) -> bytes:
    """What `soundfile.write` of the floats themselves makes (the way Stave encoded before)."""
    buffer = io.BytesIO()
    samples = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def awkward(sample_rate: int, seconds: float, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = int(sample_rate * seconds)
    shape = (frames,) if channels == 1 else (frames, channels)
    audio = (rng.uniform(-1.3, 1.3, shape) * 0.4).astype(np.float32)
    # Half-way values (round half to even), the clip points and non-finite samples.
    audio.flat[:7] = [1.0, -1.0, 0.5 / 32768, -1.5 / 32768, 2.5 / 32768, np.nan, np.inf]
    return audio


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("sample_rate", "channels"), [(16000, 1), (44100, 1), (48000, 2)])
def test_the_bytes_are_libsndfile_s_of_the_floats(
    dtype: type, sample_rate: int, channels: int
) -> None:
    audio = awkward(sample_rate, 2, sample_rate + channels, channels).astype(dtype)
    assert encode_flac(audio, sample_rate) == floats_written(audio, sample_rate)


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_measurements_of_the_samples_are_those_of_the_decoded_file(sample_rate: int) -> None:
    audio = awkward(sample_rate, 2, sample_rate)
    pcm = quantize(audio)
    data = encode_flac(audio, sample_rate)
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == sample_rate and np.array_equal(decoded, pcm)  # FLAC is lossless
    assert measure_pcm(data, pcm, sample_rate) == measure(data)


def test_a_header_that_disagrees_is_decoded() -> None:
    audio = np.sin(np.linspace(0, 2000, 48000)).astype(np.float32) * 0.5
    data = encode_flac(audio, 48000)
    assert measure_pcm(data, quantize(audio[:-1]), 48000) == measure(data)  # not its length
    assert measure_pcm(data, quantize(audio), 44100) == measure(data)  # not its rate


def test_the_device_s_samples_and_levels_are_the_host_s() -> None:
    """A batch of rows of different lengths (each padded to the longest, as a batch is):
    16-bit samples bit for bit, non-finite counts and peaks exactly, loudness within 0.001
    LU of the host's meter (float64 FFT filtering against float32 recursive filtering)."""
    rate = 16_000
    lengths = [rate * 10, rate * 10 - 999, 3_000, rate * 4 + 7, rate * 2]
    batch = np.zeros((len(lengths), max(lengths)), dtype=np.float32)
    for row, length in enumerate(lengths):
        batch[row, :length] = awkward(rate, length / rate, row) * (0.05 + 0.2 * row)
        batch[row, length:] = np.nan  # past a row's end: none of its business
    batch[4, : rate // 2] = 0.0  # a silent start: the gates drop its blocks
    audio = torch.from_numpy(batch)
    pcm = levels.pcm16(audio)
    peaks = levels.peaks_dbfs(pcm, lengths)
    loudness = levels.loudness_lufs(pcm, lengths, rate)
    assert loudness is not None
    assert levels.nonfinite_counts(audio, lengths) == [
        int((~np.isfinite(batch[row, :n])).sum()) for row, n in enumerate(lengths)
    ]
    for row, length in enumerate(lengths):
        host = quantize(batch[row, :length])
        assert np.array_equal(pcm[row, :length].numpy(), host)
        samples = host.astype(np.float32) / 32768
        assert peaks[row] == peak_dbfs(samples)
        assert abs(loudness[row] - loudness_lufs(samples, rate)) < 1e-3
    assert loudness[2] == -70.0  # shorter than a gating block
    assert levels.loudness_lufs(pcm, lengths, 22_050) is not None
    assert levels.loudness_lufs(pcm, lengths, 11_025) is None  # a hop of 1102.5 samples
