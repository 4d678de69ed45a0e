"""A batch's 16-bit samples and levels, computed where the batch already is (the GPU).

What the platform records of every clip (ARCHITECTURE.md, "The data walk": store) is cheap
for a device and costly for the host: a 10-s clip's K-weighted loudness is a millisecond of
a CPU core, a whole batch's is a few FFTs on a GPU. So the drain asks the device for them,
once per batch, and the finishing processes only encode, hash and put.

Each function takes the batch as the generator leaves it, `audio` (rows, samples) float32 in
[-1, 1] on any device with each row's length in `lengths`, and agrees with the host's
definitions (`analysis.loudness_lufs`, `analysis.peak_dbfs`, libsndfile's float-to-16-bit
rule): the 16-bit samples bit for bit, the peak exactly, the loudness to float rounding
(tested on the CPU against both).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from stave.generator.analysis import (
    HOP_S,
    block_count,
    blocks_from_hops,
    gated_loudness,
    k_weighting,
    peak_dbfs,
)

# The K-weighting filter's impulse response is cut after this many samples: its slowest pole
# (the 38 Hz high pass) has decayed below 1e-18 of its start by then at 48 kHz (1e-50 at 16).
_IMPULSE = 16_384
# Rows filtered at once: float64 spectra of 64 ten-second rows are about 270 MB of device
# memory; more rows at once gain nothing a GPU would notice.
_ROWS_PER_PASS = 64


@dataclass
class BatchLevels:
    """A batch's 16-bit samples (rows, samples) and each row's counts and levels, as the
    device that made the batch computed them."""

    pcm: torch.Tensor
    nonfinite: list[int]
    peaks_dbfs: list[float]
    loudness_lufs: list[float | None]  # None where the host must measure (odd gating hops)


def measure_batch(audio: torch.Tensor, lengths: list[int], sample_rate: int) -> BatchLevels:
    """Everything the platform records of a batch's samples, computed where they are."""
    pcm = pcm16(audio)
    loudness = loudness_lufs(pcm, lengths, sample_rate)
    return BatchLevels(
        pcm=pcm,
        nonfinite=nonfinite_counts(audio, lengths),
        peaks_dbfs=peaks_dbfs(pcm, lengths),
        loudness_lufs=list(loudness) if loudness is not None else [None] * len(lengths),
    )


def pcm16(audio: torch.Tensor) -> torch.Tensor:
    """The 16-bit samples a FLAC file of `audio` holds, as `storage.quantize` makes them:
    non-finite values made finite, scaled by 2^15, rounded half to even, clipped."""
    finite = torch.nan_to_num(audio.float(), nan=0.0, posinf=1.0, neginf=-1.0)
    return torch.round(finite * 32768.0).clamp_(-32768, 32767).to(torch.int16)


def copy_to_host(tensor: torch.Tensor, out: np.ndarray) -> None:
    """`tensor` into `out` (host memory the size of it, e.g. shared memory) in one copy."""
    torch.from_numpy(out).view(tensor.shape).copy_(tensor)


def valid_mask(lengths: list[int], samples: int, device: torch.device) -> torch.Tensor:
    """(rows, samples) True where a row's sample lies within its own length."""
    limit = torch.tensor(lengths, device=device)[:, None]
    return torch.arange(samples, device=device)[None, :] < limit


def nonfinite_counts(audio: torch.Tensor, lengths: list[int]) -> list[int]:
    """How many samples of each row (within its length) are NaN or infinite."""
    bad = ~torch.isfinite(audio) & valid_mask(lengths, audio.shape[1], audio.device)
    return [int(n) for n in bad.sum(dim=1).tolist()]


def peaks_dbfs(pcm: torch.Tensor, lengths: list[int]) -> list[float]:
    """Each row's peak in dBFS of its 16-bit samples, as `analysis.peak_dbfs` gives it for
    the decoded file (the largest magnitude is exact in float32, so the same float)."""
    magnitude = pcm.to(torch.int32).abs() * valid_mask(lengths, pcm.shape[1], pcm.device)
    largest = magnitude.amax(dim=1).tolist()
    return [peak_dbfs(np.array([m / 32768], dtype=np.float32)) for m in largest]


def loudness_lufs(pcm: torch.Tensor, lengths: list[int], sample_rate: int) -> list[float] | None:
    """Each row's integrated loudness (BS.1770-4, mono) of its 16-bit samples, or None where
    the gating hop is not a whole number of samples (the host measures those).

    The K-weighting runs as an FFT convolution with the filter's impulse response in float64
    (a recursive filter has no parallel form on a GPU); blocks and gates as the host does."""
    hop = HOP_S * sample_rate
    if not hop.is_integer():
        return None
    step = int(hop)
    rows, samples = pcm.shape
    size = 1 << int(np.ceil(np.log2(samples + _IMPULSE)))
    response = _response_spectrum(sample_rate, size, str(pcm.device))
    hops_per_row = -(-samples // step) + 3
    energy = torch.empty(rows, hops_per_row, dtype=torch.float64, device=pcm.device)
    mask = valid_mask(lengths, samples, pcm.device)
    for start in range(0, rows, _ROWS_PER_PASS):
        part = slice(start, start + _ROWS_PER_PASS)
        x = pcm[part].to(torch.float64) / 32768.0 * mask[part]
        weighted = torch.fft.irfft(torch.fft.rfft(x, n=size) * response, n=size)[:, :samples]
        # Zeros past each row's end, as the host pads a clip to its last block's hops.
        hops = torch.zeros(len(x), hops_per_row * step, dtype=torch.float64, device=pcm.device)
        hops[:, :samples] = weighted * mask[part]
        energy[part] = hops.square().reshape(len(x), hops_per_row, step).sum(dim=2)
    per_hop = energy.cpu().numpy()
    loudness = []
    for row, length in enumerate(lengths):
        count = block_count(length, sample_rate)
        blocks = blocks_from_hops(per_hop[row], count, sample_rate) if count > 0 else np.zeros(0)
        loudness.append(gated_loudness(blocks))
    return loudness


@functools.cache
def _response_spectrum(sample_rate: int, size: int, device: str) -> torch.Tensor:
    from scipy.signal import sosfilt  # lazy: scipy.signal is a second to import

    impulse = np.zeros(_IMPULSE)
    impulse[0] = 1.0
    response = sosfilt(k_weighting(sample_rate), impulse)
    return torch.fft.rfft(torch.from_numpy(response), n=size).to(device)
