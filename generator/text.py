"""A small text encoder of Stave's own: word tokens, numbers as values, two transformer layers.

No downloaded tokenizer or weights. Words in the fixed vocabulary get their own embedding; other
words share 64 hashed buckets (stable across processes); numbers become a NUM token plus
Fourier features of their value, so "96 bpm" and "97 bpm" are neighbours.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import torch
from torch import nn

MAX_TOKENS = 32
VOCAB = (
    "<pad>",
    "<null>",
    "<num>",
    "c",
    "c#",
    "d",
    "d#",
    "e",
    "f",
    "f#",
    "g",
    "g#",
    "a",
    "a#",
    "b",
    "db",
    "eb",
    "gb",
    "ab",
    "bb",
    "sharp",
    "flat",
    "major",
    "minor",
    "in",
    "key",
    "bpm",
    "tempo",
    "with",
    "without",
    "no",
    "and",
    "a",
    "of",
    "drums",
    "beat",
    "percussion",
    "bright",
    "warm",
    "soft",
    "dark",
    "plucked",
    "pluck",
    "string",
    "guitar",
    "harp",
    "organ",
    "bell",
    "bells",
    "square",
    "lead",
    "synth",
    "bass",
    "arpeggio",
    "arpeggios",
    "chords",
    "chord",
    "melody",
    "tune",
    "slow",
    "fast",
    "piano",
    "pad",
)
HASH_BUCKETS = 64
_TOKEN_RE = re.compile(r"[a-g][#b](?![a-z])|[a-z]+|\d+(?:\.\d+)?")
_INDEX = {word: i for i, word in enumerate(VOCAB)}


@dataclass(frozen=True)
class Tokens:
    ids: torch.Tensor  # (B, L) long
    values: torch.Tensor  # (B, L) float: the number for <num> tokens, else 0
    mask: torch.Tensor  # (B, L) bool: True where a real token is

    def to(self, device: torch.device | str) -> Tokens:
        return Tokens(self.ids.to(device), self.values.to(device), self.mask.to(device))


def tokenize(prompts: list[str]) -> Tokens:
    """Token ids, numeric values and a padding mask; an empty prompt is the <null> token."""
    ids = torch.zeros(len(prompts), MAX_TOKENS, dtype=torch.long)
    values = torch.zeros(len(prompts), MAX_TOKENS)
    for row, prompt in enumerate(prompts):
        words = _TOKEN_RE.findall(prompt.lower())[:MAX_TOKENS] or ["<null>"]
        for col, word in enumerate(words):
            if word[0].isdigit():
                ids[row, col] = _INDEX["<num>"]
                values[row, col] = float(word)
            elif word in _INDEX:
                ids[row, col] = _INDEX[word]
            else:
                ids[row, col] = len(VOCAB) + zlib.crc32(word.encode()) % HASH_BUCKETS
    return Tokens(ids=ids, values=values, mask=ids != 0)


class TextEncoder(nn.Module):
    def __init__(self, dim: int = 128, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(len(VOCAB) + HASH_BUCKETS, dim, padding_idx=0)
        self.position = nn.Embedding(MAX_TOKENS, dim)
        self.number = nn.Linear(16, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def _number_features(self, values: torch.Tensor) -> torch.Tensor:
        scaled = torch.log1p(values.clamp_min(0))[..., None]  # bpm 60..180 -> 4.1..5.2
        freqs = 2.0 ** torch.arange(8, device=values.device, dtype=values.dtype) * math.pi / 4
        return torch.cat([torch.sin(scaled * freqs), torch.cos(scaled * freqs)], dim=-1)

    def forward(self, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token features (B, L, D), mask (B, L), pooled (B, D))."""
        ids, values, mask = tokens.ids, tokens.values, tokens.mask
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)[None]
        is_num = (ids == _INDEX["<num>"]).unsqueeze(-1)
        x = x + is_num * self.number(self._number_features(values))
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1)
        return x, mask, pooled
