"""Encoding and measuring a clip without decoding it again: the bytes are those libsndfile
makes of the float samples, and the measurements those of the decoded file, exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from stave.tasks.storage import encode_flac, measure, measure_encoded, quantize


def floats_written(audio: np.ndarray, sample_rate: int) -> bytes:
    """What `soundfile.write` of the floats themselves makes (the way Stave encoded before)."""
    buffer = io.BytesIO()
    samples = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("sample_rate", "channels"), [(16000, 1), (44100, 1), (48000, 2)])
def test_bytes_and_measurements_match_the_decoded_file(
    dtype: type, sample_rate: int, channels: int
) -> None:
    rng = np.random.default_rng(sample_rate + channels)
    shape = (sample_rate * 2,) if channels == 1 else (sample_rate * 2, channels)
    audio = (rng.uniform(-1.3, 1.3, shape) * 0.4).astype(dtype)
    # Half-way values (round half to even), the clip points and non-finite samples.
    audio.flat[:7] = [1.0, -1.0, 0.5 / 32768, -1.5 / 32768, 2.5 / 32768, np.nan, np.inf]
    data = encode_flac(audio, sample_rate)
    assert data == floats_written(audio, sample_rate)
    assert measure_encoded(data, quantize(audio), sample_rate) == measure(data)


def test_a_header_that_disagrees_is_decoded() -> None:
    audio = np.sin(np.linspace(0, 2000, 48000)).astype(np.float32) * 0.5
    data = encode_flac(audio, 48000)
    other = quantize(audio * 0.9)  # not what the file holds: its MD5 differs
    assert measure_encoded(data, other, 48000) == measure(data)
