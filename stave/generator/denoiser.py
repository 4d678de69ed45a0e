"""The denoiser: a transformer over latent frames whose self-attention is linear in length.

Self-attention uses the kernel feature map phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, as
ACE-Step's linear transformer does): softmax(QK^T)V becomes phi(Q)(phi(K)^T V), so cost grows
with the number of frames, not its square. Position comes from a depthwise convolution in each
feed-forward block (no fixed length). The timestep and the pooled prompt modulate every block
(adaptive layer norm, as in DiT); cross-attention reads the prompt's tokens (a handful, so
softmax there is still linear in the number of frames).

With `structure` on, two facts the prompt names are given to the model directly rather than
left to the word features (as ACE-Step conditions on its own structure tags):
- a beat clock: per frame, the sine and cosine of the phase of the phrase, bar, half bar, beat
  and eighth note at the prompt's tempo, counted from the clip's first frame. A clip must hold one
  exact period for ten seconds and more; the convolutions and linear attention cannot count
  frames that far, but with the clock an onset is a local decision ("the beat phase is zero").
- the key (tonic and mode) as one embedding in the block modulation, so "minor" is not a word
  among a dozen in the pooled prompt.
A prompt that names no tempo (or no key) gets zeros there, as the unconditional branch does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stave.generator.text import N_KEYS, EncodedPrompt, TextEncoder, Tokens

# Clock periods in beats: the four-bar phrase, the bar (4/4), the half bar, the beat and the
# eighth note. The phrase clock says which chord of a four-chord progression is due.
CLOCK_BEATS = (16.0, 4.0, 2.0, 1.0, 0.5)


@dataclass(frozen=True)
class DenoiserConfig:
    latent_channels: int = 16
    dim: int = 128
    depth: int = 6
    heads: int = 4
    text_dim: int = 128
    ff_mult: int = 2
    attention: Literal["linear", "softmax"] = "linear"
    # Rotary positions in self-attention (off in checkpoints trained before it existed).
    rope: bool = False
    # Beat clock and key embedding from the prompt (off in checkpoints from before them).
    structure: bool = False
    frame_rate: float = 31.25  # latent frames per second, for the beat clock

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    args = t[:, None].float() * 1000 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def beat_clock(
    bpm: torch.Tensor, frames: int, frame_rate: float, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, frames, 2 * len(CLOCK_BEATS) + 1): sin/cos of each clock's phase and a has-tempo flag.

    `offset` (B,) shifts the count when the frames are a crop from later in a clip. The phase is
    reduced in float64, so ten minutes at 400 bpm loses nothing to rounding.
    """
    n = torch.arange(frames, device=bpm.device, dtype=torch.float64)[None]
    if offset is not None:
        n = n + offset.to(torch.float64)[:, None]
    beats = n / frame_rate * (bpm.to(torch.float64)[:, None] / 60.0)  # (B, frames)
    periods = torch.tensor(CLOCK_BEATS, device=bpm.device, dtype=torch.float64)
    phase = 2 * math.pi * torch.remainder(beats[..., None] / periods, 1.0)
    has = (bpm > 0).to(torch.float64)[:, None, None]
    features = torch.cat([phase.sin(), phase.cos()], dim=-1) * has
    return torch.cat([features, has.expand(-1, frames, 1)], dim=-1).float()


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al.) over the last dim of (B, H, N, D) features."""
    half = x.shape[-1] // 2
    freqs = 10_000 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kind: str, rope: bool = False) -> None:
        super().__init__()
        self.heads, self.kind, self.rope = heads, kind, rope
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.kind == "softmax":
            if self.rope:
                q, k = rotate(q), rotate(k)
            attn_mask = None if mask is None else mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            q, k = F.elu(q) + 1, F.elu(k) + 1
            if mask is not None:  # padded frames contribute nothing
                k = k * mask[:, None, :, None].to(k.dtype)
            # With rotary positions the numerator uses rotated features and the normaliser the
            # plain (positive) ones, as RoFormer does for linear attention; still linear in N.
            qn, kn = (rotate(q), rotate(k)) if self.rope else (q, k)
            kv = torch.einsum("bhnd,bhne->bhde", kn, v)
            norm = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2)).clamp_min(1e-6)
            out = torch.einsum("bhnd,bhde->bhne", qn, kv) / norm[..., None]
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, text_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(text_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`kv`: `self.kv(text)` made already (the same text at every step of a batch)."""
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        kv = self.kv(text) if kv is None else kv
        k, v = kv.view(b, text.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask[:, None, None, :])
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        hidden = dim * mult
        self.up = nn.Linear(dim, 2 * hidden)
        self.conv = nn.Conv1d(hidden, hidden, 5, padding=2, groups=hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.up(x).chunk(2, dim=-1)
        h = a * F.gelu(gate)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.down(F.gelu(h))


class Block(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.attn = SelfAttention(d, cfg.heads, cfg.attention, cfg.rope)
        self.norm2 = nn.LayerNorm(d)
        self.cross = CrossAttention(d, cfg.text_dim, cfg.heads)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False)
        self.ff = FeedForward(d, cfg.ff_mult)
        self.modulation = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        mask: torch.Tensor | None,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2 = self.modulation(cond)[:, None].chunk(6, dim=-1)
        x = x + (1 + g1) * self.attn(self.norm1(x) * (1 + c1) + s1, mask)
        x = x + self.cross(self.norm2(x), text, text_mask, kv)
        return x + (1 + g2) * self.ff(self.norm3(x) * (1 + c2) + s2)


@dataclass
class PreparedText:
    """A prompt's per-batch constants for the denoiser (see `Denoiser.prepare`)."""

    pooled: torch.Tensor
    key: torch.Tensor | None
    clock: torch.Tensor | None  # beat_clock features, float32
    kv: list[torch.Tensor]  # each block's cross-attention keys and values


class Denoiser(nn.Module):
    """Predicts the flow-matching velocity of normalised latents given time and prompt."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg.text_dim)
        self.inp = nn.Linear(cfg.latent_channels, cfg.dim)
        self.time = nn.Sequential(
            nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim)
        )
        self.pooled = nn.Linear(cfg.text_dim, cfg.dim)
        if cfg.structure:
            self.clock = nn.Linear(2 * len(CLOCK_BEATS) + 1, cfg.dim)
            self.key = nn.Embedding(N_KEYS + 1, cfg.dim)
            nn.init.normal_(self.key.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.final_mod = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.latent_channels)
        for layer in (self.final_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def encode_text(self, tokens: Tokens) -> EncodedPrompt:
        return self.text(tokens)

    def prepare(
        self, text: EncodedPrompt, frames: int, offset: torch.Tensor | None = None
    ) -> PreparedText:
        """What `forward` makes of `text` for `frames` frames that no step changes: computed
        once per batch and branch instead of at every step (the same operations on the same
        inputs, so the velocity is the same, bit for bit)."""
        structure = self.cfg.structure
        return PreparedText(
            pooled=self.pooled(text.pooled),
            key=self.key(text.key) if structure else None,
            clock=beat_clock(text.bpm, frames, self.cfg.frame_rate, offset) if structure else None,
            kv=[block.cross.kv(text.tokens) for block in self._blocks()],
        )

    def _blocks(self) -> list[Block]:
        return [block for block in self.blocks if isinstance(block, Block)]

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time conditioning of `t` (B,): the same for every branch of a step."""
        return self.time(timestep_embedding(t, self.cfg.dim))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: EncodedPrompt,
        mask: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        *,
        prepared: PreparedText | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, T), t (B,), encoded text -> velocity (B, C, T).

        `offset` (B,): the frame in its clip where each crop starts (training); 0 by default.
        `prepared` (`prepare(text, T)`) and `time` (`embed_time(t)`): made already.
        """
        h = self.inp(x.transpose(1, 2))
        prepared = prepared or self.prepare(text, x.shape[-1], offset)
        cond = (self.embed_time(t) if time is None else time) + prepared.pooled
        if prepared.clock is not None and prepared.key is not None:  # cfg.structure
            h = h + self.clock(prepared.clock.to(h.dtype))
            cond = cond + prepared.key
        cond = F.silu(cond)
        for block, kv in zip(self.blocks, prepared.kv, strict=True):
            h = block(h, cond, text.tokens, text.mask, mask, kv)
        shift, scale = self.final_mod(cond)[:, None].chunk(2, dim=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift).transpose(1, 2)
