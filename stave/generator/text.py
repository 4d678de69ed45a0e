"""A small text encoder of Stave's own: word tokens, numbers as values, two transformer layers.

No downloaded tokenizer or weights. Words in the fixed vocabulary get their own embedding; other
words share 64 hashed buckets (stable across processes); numbers become a NUM token plus
Fourier features of their value, so "96 bpm" and "97 bpm" are neighbours.

The tokenizer also reads the two facts a clip must hold from its first frame to its last: the
tempo ("96 bpm", "tempo 96") and the key ("D minor", "e flat major"). They travel beside the
tokens, so the denoiser can turn the tempo into a beat clock and the key into one embedding
rather than having to recover both from word features (see `denoiser.py`).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import NamedTuple

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
_PITCH = {
    "c": 0, "c#": 1, "db": 1, "d": 2, "d#": 3, "eb": 3, "e": 4, "f": 5, "f#": 6, "gb": 6,
    "g": 7, "g#": 8, "ab": 8, "a": 9, "a#": 10, "bb": 10, "b": 11,
}  # fmt: skip
MODES = ("major", "minor")
N_KEYS = 24  # key ids 1..24 (0: none named) = 1 + 2 * pitch class + mode
BPM_RANGE = (20.0, 400.0)  # a tempo outside this is not read as one


@dataclass(frozen=True)
class Tokens:
    ids: torch.Tensor  # (B, L) long
    values: torch.Tensor  # (B, L) float: the number for <num> tokens, else 0
    mask: torch.Tensor  # (B, L) bool: True where a real token is
    bpm: torch.Tensor  # (B,) float: the tempo the prompt names, 0 where it names none
    key: torch.Tensor  # (B,) long: the key the prompt names (1..N_KEYS), 0 where none

    def to(self, device: torch.device | str) -> Tokens:
        return Tokens(
            self.ids.to(device),
            self.values.to(device),
            self.mask.to(device),
            self.bpm.to(device),
            self.key.to(device),
        )


class EncodedPrompt(NamedTuple):
    tokens: torch.Tensor  # (B, L, D) token features
    mask: torch.Tensor  # (B, L) bool
    pooled: torch.Tensor  # (B, D)
    bpm: torch.Tensor  # (B,) as in Tokens
    key: torch.Tensor  # (B,) as in Tokens


def parallel_key(prompt: EncodedPrompt) -> EncodedPrompt:
    """The same prompt in the parallel key (D minor <-> D major); no key stays none."""
    key = prompt.key
    return prompt._replace(key=torch.where(key > 0, ((key - 1) ^ 1) + 1, key))


def read_tempo(words: list[str]) -> float:
    """The tempo a prompt's words name ("96 bpm", "tempo 96"), or 0."""
    for i, word in enumerate(words):
        if not word[0].isdigit():
            continue
        named = (i + 1 < len(words) and words[i + 1] == "bpm") or (
            i > 0 and words[i - 1] == "tempo"
        )
        if named and BPM_RANGE[0] <= float(word) <= BPM_RANGE[1]:
            return float(word)
    return 0.0


def read_key(words: list[str]) -> int:
    """The key id a prompt's words name ("d minor", "c# major", "e flat minor"), or 0."""
    for i, word in enumerate(words):
        if word not in _PITCH:
            continue
        pitch, rest = _PITCH[word], words[i + 1 : i + 3]
        if rest and rest[0] in ("sharp", "flat"):
            pitch = (pitch + (1 if rest[0] == "sharp" else -1)) % 12
            rest = rest[1:]
        if rest and rest[0] in MODES:
            return 1 + 2 * pitch + MODES.index(rest[0])
    return 0


def tokenize(prompts: list[str]) -> Tokens:
    """Token ids, numeric values and a padding mask; an empty prompt is the <null> token."""
    ids = torch.zeros(len(prompts), MAX_TOKENS, dtype=torch.long)
    values = torch.zeros(len(prompts), MAX_TOKENS)
    bpm = torch.zeros(len(prompts))
    key = torch.zeros(len(prompts), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        words = _TOKEN_RE.findall(prompt.lower())[:MAX_TOKENS] or ["<null>"]
        bpm[row], key[row] = read_tempo(words), read_key(words)
        for col, word in enumerate(words):
            if word[0].isdigit():
                ids[row, col] = _INDEX["<num>"]
                values[row, col] = float(word)
            elif word in _INDEX:
                ids[row, col] = _INDEX[word]
            else:
                ids[row, col] = len(VOCAB) + zlib.crc32(word.encode()) % HASH_BUCKETS
    return Tokens(ids=ids, values=values, mask=ids != 0, bpm=bpm, key=key)


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

    def forward(self, tokens: Tokens) -> EncodedPrompt:
        ids, values, mask = tokens.ids, tokens.values, tokens.mask
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)[None]
        is_num = (ids == _INDEX["<num>"]).unsqueeze(-1)
        x = x + is_num * self.number(self._number_features(values))
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1)
        return EncodedPrompt(x, mask, pooled, tokens.bpm, tokens.key)
