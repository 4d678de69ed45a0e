"""Deep-compression autoencoder: mono 16 kHz audio <-> 4 x 16 latents at 512x temporal compression.

Encoder: a learnable filterbank convolution (initialised as constant-Q analysis at the synth's
frequencies: learning pitch from raw samples is out of reach of a few CPU minutes), log
magnitude, then strided 2-D convolutions over (pitch x time) down to 4 channels x 16 pitch rows
at 31.25 latent frames per second (512x fewer frames than samples).
Decoder: 2-D transposed convolutions back to the synth's control rate (250 Hz), predicting
oscillator and noise-band amplitudes that the additive synth turns into audio.
Embedding: statistics of the latents over time through a small head, L2-normalised, 512-d.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stave.generator.synth import (
    HOP,
    N_NOISE,
    N_OSC,
    SAMPLE_RATE,
    noise_band_edges,
    oscillator_hz,
    synthesize,
)

EMBEDDING_DIM = 512


@dataclass(frozen=True)
class AutoencoderConfig:
    channels: int = 4  # latent channels per pitch row
    rows: int = 16  # pitch rows: the 96 synth sources downsampled 6x
    width: int = 32
    time_downsample: int = 8  # control rate (1 frame per HOP samples) -> latent rate
    analysis_kernel: int = 2048
    n_timbres: int = 5

    @property
    def latent_channels(self) -> int:
        """Channels of the flattened latent the denoiser sees (channels x rows)."""
        return self.channels * self.rows

    @property
    def compression(self) -> int:
        return HOP * self.time_downsample

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _analysis_filters(kernel: int) -> torch.Tensor:
    """(2 * (N_OSC + N_NOISE), 1, kernel): cos/sin pairs, constant-Q windows capped at `kernel`."""
    centres = oscillator_hz().tolist() + [math.sqrt(lo * hi) for lo, hi in noise_band_edges()]
    t = torch.arange(kernel, dtype=torch.float64) - kernel / 2
    filters = []
    for f in centres:
        width = min(kernel, int(17 * SAMPLE_RATE / f))  # ~17 cycles: a semitone of resolution
        window = torch.zeros(kernel, dtype=torch.float64)
        start = (kernel - width) // 2
        window[start : start + width] = torch.hann_window(
            width, periodic=False, dtype=torch.float64
        )
        window /= window.sum()
        for fn in (torch.cos, torch.sin):
            filters.append(window * fn(2 * math.pi * f * t / SAMPLE_RATE))
    return torch.stack(filters).float()[:, None, :]


def _norm(channels: int) -> nn.GroupNorm:
    # Normalised: without it the signal shrinks through the stack at initialisation and the
    # decoder starts out predicting only its biases.
    return nn.GroupNorm(4, channels)


class Encoder(nn.Module):
    """Audio -> constant-Q log magnitudes (an image: 96 sources x frames) -> 2-D convolutions.

    2-D, as ACE-Step's DCAE does over mel spectrograms: the same filters serve every pitch, so
    the encoder learns a note once, not once per key (a 1-D stack lost pitch in CPU training).
    """

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        w = cfg.width
        self.kernel = cfg.analysis_kernel
        self.analysis = nn.Conv1d(
            1, 2 * (N_OSC + N_NOISE), cfg.analysis_kernel, stride=HOP, bias=False
        )
        with torch.no_grad():
            self.analysis.weight.copy_(_analysis_filters(cfg.analysis_kernel))
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, w, (4, 4), stride=(2, 2), padding=(1, 1)),
            _norm(w),
            nn.GELU(),  # 48 rows
            nn.Conv2d(w, w, (3, 4), stride=(3, 2), padding=(0, 1)),
            _norm(w),
            nn.GELU(),  # 16 rows
            nn.Conv2d(w, w, (3, 4), stride=(1, 2), padding=(1, 1)),
            _norm(w),
            nn.GELU(),
            nn.Conv2d(w, cfg.channels, 1),
        )

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 96, samples / HOP) log magnitudes at the synth's frequencies."""
        pad = self.kernel // 2
        pairs = self.analysis(F.pad(audio[:, None, :], (pad, pad - HOP)))
        mag = pairs.unflatten(1, (-1, 2)).pow(2).sum(2).add(1e-8).sqrt()
        return torch.log1p(100 * mag)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, channels * rows, samples / compression)."""
        return self.net(self.features(audio)[:, None]).flatten(1, 2)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 3, padding=1),
            _norm(w),
            nn.GELU(),
            nn.ConvTranspose2d(w, w, (3, 4), stride=(1, 2), padding=(1, 1)),
            _norm(w),
            nn.GELU(),
            nn.ConvTranspose2d(w, w, (3, 4), stride=(3, 2), padding=(0, 1)),
            _norm(w),
            nn.GELU(),
            nn.ConvTranspose2d(w, w, (4, 4), stride=(2, 2), padding=(1, 1)),
            _norm(w),
            nn.GELU(),
            nn.Conv2d(w, 1, 3, padding=1),
        )

    def controls(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, channels * rows, T) -> non-negative synth amplitudes (B, 96, T * 8)."""
        image = latents.unflatten(1, (self.cfg.channels, self.cfg.rows))
        # softplus, not relu: a unit that starts negative still gets gradient.
        return F.softplus(self.net(image)[:, 0] - 3.0) * 0.1

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return synthesize(self.controls(latents))


class EmbeddingHead(nn.Module):
    """Pools latents over time (mean, spread, movement) into an L2-normalised 512-d vector."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3 * cfg.latent_channels, 256), nn.GELU(), nn.Linear(256, EMBEDDING_DIM)
        )
        self.classify = nn.Linear(EMBEDDING_DIM, cfg.n_timbres)  # training signal only

    def pooled(self, latents: torch.Tensor) -> torch.Tensor:
        delta = latents[..., 1:] - latents[..., :-1]
        return torch.cat([latents.mean(-1), latents.std(-1), delta.abs().mean(-1)], dim=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(self.pooled(latents)), dim=-1)


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.embedder = EmbeddingHead(cfg)

    def frames_for(self, samples: int) -> int:
        return samples // self.cfg.compression

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        usable = self.frames_for(audio.shape[-1]) * self.cfg.compression
        return self.encoder(audio[..., :usable])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        return self.embedder(latents)
