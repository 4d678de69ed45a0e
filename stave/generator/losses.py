"""Training losses: waveform L1 plus multi-resolution STFT (spectral convergence, log magnitude)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

STFT_SIZES = (256, 512, 1024, 2048)


def _mag(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
    return spec.abs().clamp_min(1e-4)  # ~-80 dB floor: exact silence must not dominate


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total = pred.new_zeros(())
    for n_fft in STFT_SIZES:
        p, t = _mag(pred, n_fft), _mag(target, n_fft)
        convergence = torch.linalg.norm(t - p, dim=(-2, -1)) / torch.linalg.norm(t, dim=(-2, -1))
        total = total + convergence.mean() + F.l1_loss(p.log(), t.log())
    return total / len(STFT_SIZES)


def waveform_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(pred, target)
