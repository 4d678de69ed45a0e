"""Storage: encode each clip (FLAC), measure the written file, put it under an id-only key.

The measurements (sha256, size, duration, sample rate, loudness, peak) are of the encoded bytes
that go to the store, not of the float samples they were made from: of the 16-bit samples the
file holds, once its FLAC header's MD5 of them says so (decoding the file again cost a fifth
of the store stage), else of the file decoded. If any put fails, the objects already written
for the batch are removed before the error is raised: a failed batch leaves nothing behind for
`stave gc` to find.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from stave.generator.analysis import LOUDNESS_METHOD, loudness_lufs, peak_dbfs
from stave.infra.errors import StaveError, StorageUnavailable
from stave.infra.objectstore.base import ObjectStore
from stave.infra.objectstore.keys import audio_key
from stave.models.base import new_id

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


def measure_encoded(data: bytes, pcm: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """What a FLAC file made from `pcm` is, without decoding it: its STREAMINFO header must say
    it holds exactly these samples (their MD5, count, rate, channels and 16 bits), and then the
    samples a decoder returns are `pcm / 32768`, bit for bit. A file whose header disagrees is
    decoded and measured from its bytes, as `measure` does."""
    info = _streaminfo(data)
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    expected = (
        sample_rate,
        channels,
        16,
        pcm.shape[0],
        hashlib.md5(np.ascontiguousarray(pcm, dtype="<i2").data).digest(),
    )
    if info != expected:
        return measure(data)
    audio = pcm.reshape(pcm.shape[0], channels).astype(np.float32) * np.float32(1 / 32768)
    return _facts(data, audio, sample_rate)


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


def store_clips(
    store: ObjectStore,
    made: list[tuple[uuid.UUID, Any, dict[str, Any]]],
    *,
    env_name: str,
) -> list[StoredClip]:
    """Encode, measure and put each (task id, clip, provenance); all or nothing.

    Clips are stored side by side on a pool of one thread per core: FLAC encoding and decoding
    (libsndfile through cffi), the loudness filter, numpy and the put's write and fsync all
    release the GIL, so the batch takes about 1/cores of the time one clip after another did."""
    futures = [_pool().submit(_store_one, store, item, env_name) for item in made]
    stored: list[StoredClip] = []
    failure: BaseException | None = None
    for future in futures:  # every clip finished (or failed) before anything is decided
        try:
            stored.append(future.result())
        except BaseException as err:  # re-raised below, once every clip has finished
            failure = failure or err
    if failure is not None:
        remove_objects(store, [clip.object_key for clip in stored])
        raise failure
    return stored


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="stave-store")


def _store_one(
    store: ObjectStore, item: tuple[uuid.UUID, Any, dict[str, Any]], env_name: str
) -> StoredClip:
    task_id, clip, record = item
    pcm = quantize(clip.audio)
    data = _encode_pcm(pcm, clip.sample_rate)
    facts = measure_encoded(data, pcm, clip.sample_rate)
    asset_id = new_id()
    key = audio_key(env_name, asset_id, AUDIO_FORMAT)
    try:
        store.put_bytes(key, data, content_type=CONTENT_TYPE)
    except StaveError:
        raise
    except Exception as err:
        raise StorageUnavailable(f"writing {key} to {store.describe()} failed: {err}") from err
    return StoredClip(
        task_id=task_id,
        asset_id=asset_id,
        object_key=key,
        format=AUDIO_FORMAT,
        requested_duration_s=float(clip.request.duration_s),
        nonfinite_samples=int(np.count_nonzero(~np.isfinite(clip.audio))),
        embedding=np.asarray(clip.embedding, dtype=np.float32),
        provenance=record,
        timings=dict(clip.timings),
        device=clip.device,
        **facts,
    )


def remove_objects(store: ObjectStore, keys: list[str]) -> list[str]:
    """Delete `keys`, best effort; returns the keys that could not be removed (for gc)."""
    left: list[str] = []
    for key in keys:
        try:
            store.delete(key)
        except Exception:
            left.append(key)
    return left
