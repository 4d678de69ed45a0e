"""Storage: each clip's 16-bit samples as FLAC, measured, put under an id-only key.

The measurements (sha256, size, duration, sample rate, loudness, peak) are of what the stored
file holds: the 16-bit samples it was encoded from, once its FLAC header (STREAMINFO) says it
holds exactly those (rate, channels, 16 bits, sample count; FLAC is lossless), else of the
file decoded. The samples arrive quantized, and usually with their loudness and peak, from the
device that made them (`generator/levels.py`): a clip is encoded once and never decoded again.
The finishing processes (`tasks/finishing/`) call `store_pcm` once per clip; a batch whose put
fails has its other objects removed there, so a failed batch leaves nothing for `stave gc`.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from stave.generator.analysis import LOUDNESS_METHOD, loudness_lufs, peak_dbfs
from stave.infra.errors import StaveError, StorageUnavailable
from stave.infra.objectstore.base import ObjectStore

AUDIO_FORMAT = "flac"
CONTENT_TYPE = "audio/flac"


@dataclass
class StoredClip:
    task_id: uuid.UUID
    asset_id: uuid.UUID
    object_key: str
    sha256: str
    bytes: int
    format: str
    sample_rate: int
    channels: int
    duration_s: float
    requested_duration_s: float
    loudness_lufs: float
    loudness_method: str
    peak_dbfs: float
    nonfinite_samples: int
    embedding: np.ndarray
    provenance: dict[str, Any]
    timings: dict[str, float]
    device: str


def quantize(audio: np.ndarray) -> np.ndarray:
    """The 16-bit samples a FLAC file of `audio` holds: non-finite values made finite, then
    libsndfile's own float-to-16-bit rule (scale by 32768, round half to even, clip), so the
    file's bytes are those `soundfile.write` of the floats makes (tested byte for byte)."""
    samples = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    if samples.dtype != np.float32:  # float32 scales by 2^15 exactly: no float64 copy needed
        samples = np.asarray(samples, dtype=np.float64)
    scaled: np.ndarray = np.rint(samples * samples.dtype.type(32768.0))
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit FLAC; deterministic for the same samples and libsndfile version."""
    return _encode_pcm(quantize(audio), sample_rate)


def _encode_pcm(pcm: np.ndarray, sample_rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def measure(data: bytes) -> dict[str, Any]:
    """What a written audio file is, read back from its bytes."""
    import soundfile

    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return _facts(data, audio, int(rate))


def measure_pcm(
    data: bytes,
    pcm: np.ndarray,
    sample_rate: int,
    *,
    loudness: float | None = None,
    peak: float | None = None,
) -> dict[str, Any]:
    """What a FLAC file made from the 16-bit `pcm` is, without decoding it: its STREAMINFO
    header must say it holds this many samples at this rate, one channel, 16 bits; then the
    samples a decoder returns are `pcm / 32768`, bit for bit. `loudness` and `peak` are those
    samples' where the device measured them already. A file whose header disagrees is decoded
    and measured from its bytes, as `measure` does."""
    info = _streaminfo(data)
    if info is None or info[:4] != (sample_rate, 1, 16, len(pcm)):
        return measure(data)
    audio: np.ndarray | None = None
    if loudness is None or peak is None:
        audio = pcm.astype(np.float32) * np.float32(1 / 32768)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "sample_rate": sample_rate,
        "channels": 1,
        "duration_s": len(pcm) / sample_rate,
        "loudness_lufs": float(loudness_lufs(audio, sample_rate))
        if audio is not None
        else loudness,
        "loudness_method": LOUDNESS_METHOD,
        "peak_dbfs": float(peak_dbfs(audio)) if audio is not None else peak,
    }


def _streaminfo(data: bytes) -> tuple[int, int, int, int, bytes] | None:
    """(sample rate, channels, bits per sample, samples, MD5 of the samples) from a FLAC
    file's first metadata block, or None when it is not one."""
    if data[:4] != b"fLaC" or len(data) < 42 or data[4] & 0x7F != 0:
        return None
    block = data[8:42]
    bits = int.from_bytes(block[10:18], "big")
    rate, channels = bits >> 44, ((bits >> 41) & 0x7) + 1
    return rate, channels, ((bits >> 36) & 0x1F) + 1, bits & ((1 << 36) - 1), block[18:34]


def _facts(data: bytes, audio: np.ndarray, rate: int) -> dict[str, Any]:
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)  # the same values
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "sample_rate": rate,
        "channels": int(audio.shape[1]),
        "duration_s": len(audio) / rate,
        "loudness_lufs": float(loudness_lufs(mono, rate)),
        "loudness_method": LOUDNESS_METHOD,
        "peak_dbfs": float(peak_dbfs(mono)),
    }


def store_pcm(
    store: ObjectStore,
    pcm: np.ndarray,
    sample_rate: int,
    key: str,
    *,
    loudness: float | None = None,
    peak: float | None = None,
    cpu: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Encode one clip's 16-bit samples, measure the file and put it under `key`; its facts.
    `cpu`, when given, gathers this thread's CPU seconds by step (encode, measure, put)."""
    started = time.thread_time()
    data = _encode_pcm(pcm, sample_rate)
    encoded = time.thread_time()
    facts = measure_pcm(data, pcm, sample_rate, loudness=loudness, peak=peak)
    measured = time.thread_time()
    try:
        store.put_bytes(key, data, content_type=CONTENT_TYPE, sha256=facts["sha256"])
    except StaveError:
        raise
    except Exception as err:
        raise StorageUnavailable(f"writing {key} to {store.describe()} failed: {err}") from err
    if cpu is not None:
        for step, spent in (
            ("encode", encoded - started),
            ("measure", measured - encoded),
            ("put", time.thread_time() - measured),
        ):
            cpu[step] = cpu.get(step, 0.0) + spent
    return facts


def remove_objects(store: ObjectStore, keys: list[str]) -> list[str]:
    """Delete `keys`, best effort; returns the keys that could not be removed (for gc)."""
    left: list[str] = []
    for key in keys:
        try:
            store.delete(key)
        except Exception:
            left.append(key)
    return left
