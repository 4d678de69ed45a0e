"""A differentiable additive synthesizer: the last stage of the decoder and the corpus's renderer.

Audio is the sum of a fixed bank of sinusoids on the equal-tempered grid (MIDI 28-107, 41 Hz to
3.95 kHz) and a few fixed noise bands, each scaled by an amplitude envelope given at a control
rate of SAMPLE_RATE / HOP frames per second and interpolated linearly in between. Phases are
global (sample index 0 is phase 0) and the noise is a fixed seeded buffer, so the same controls
always make the same samples, and the corpus (rendered by this synth) can be reconstructed
exactly by a decoder that predicts the controls (DDSP, Engel et al. 2020).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch

from stave.generator import SAMPLE_RATE as SAMPLE_RATE  # re-exported: its home was here

HOP = 64  # control frames every 4 ms
LOWEST_MIDI = 28
N_OSC = 80  # MIDI 28..107
N_NOISE = 16
NOISE_SEED = 20261123
NOISE_PERIOD = 1 << 16  # 4.1 s of noise, tiled


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def oscillator_hz() -> torch.Tensor:
    return torch.tensor([midi_to_hz(LOWEST_MIDI + k) for k in range(N_OSC)], dtype=torch.float64)


def noise_band_edges() -> list[tuple[float, float]]:
    edges = torch.logspace(math.log10(60.0), math.log10(SAMPLE_RATE / 2), N_NOISE + 1).tolist()
    return list(itertools.pairwise(edges))


@lru_cache(maxsize=8)
def _basis(frames: int, device: str) -> torch.Tensor:
    """(N_OSC + N_NOISE, frames, HOP) float32: every oscillator and noise band, framed."""
    n = frames * HOP
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    # float64 phases: at 10 s and 4 kHz a float32 phase would drift audibly.
    sines = torch.sin(2 * math.pi * oscillator_hz()[:, None] * t[None, :]).float()
    reps = -(-n // NOISE_PERIOD)
    noise = _noise_bank().repeat(1, reps)[:, :n]
    return torch.cat([sines, noise], 0).reshape(N_OSC + N_NOISE, frames, HOP).to(device)


@lru_cache(maxsize=1)
def _noise_bank() -> torch.Tensor:
    """(N_NOISE, NOISE_PERIOD): one seeded white noise split into log-spaced bands, unit RMS."""
    gen = torch.Generator().manual_seed(NOISE_SEED)
    white = torch.randn(NOISE_PERIOD, generator=gen, dtype=torch.float64)
    spectrum = torch.fft.rfft(white)
    freqs = torch.fft.rfftfreq(NOISE_PERIOD, 1 / SAMPLE_RATE)
    bands = []
    for lo, hi in noise_band_edges():
        mask = ((freqs >= lo) & (freqs < hi)).to(spectrum.dtype)
        band = torch.fft.irfft(spectrum * mask, n=NOISE_PERIOD)
        bands.append(band / band.pow(2).mean().sqrt().clamp_min(1e-9))
    return torch.stack(bands).float()


def synthesize(controls: torch.Tensor) -> torch.Tensor:
    """(B, N_OSC + N_NOISE, F) amplitudes at the control rate -> (B, F * HOP) audio.

    Amplitude of frame f applies at sample f * HOP and ramps linearly to frame f + 1's.
    """
    batch, channels, frames = controls.shape
    if channels != N_OSC + N_NOISE:
        raise ValueError(f"controls have {channels} channels, expected {N_OSC + N_NOISE}")
    basis = _basis(frames, str(controls.device)).to(controls.dtype)
    ramp = torch.arange(HOP, device=controls.device, dtype=controls.dtype) / HOP
    nxt = torch.cat([controls[..., 1:], controls[..., -1:]], dim=-1)
    # Per frame: sum over sources of amplitude x basis, once for the frame's own amplitude and
    # once for the next frame's, mixed by the ramp. Never materialises (B, K, samples).
    here = torch.einsum("bkf,kfh->bfh", controls, basis)
    there = torch.einsum("bkf,kfh->bfh", nxt, basis)
    audio = here * (1 - ramp) + there * ramp
    return audio.reshape(batch, frames * HOP)
