"""The training corpus: procedurally generated, labelled music with prompts made from the labels.

Five timbres (plucked string, organ, bell, square lead, bass), tempo 60-180 BPM, all 12 keys in
major and (harmonic) minor, arpeggio / chords / melody, with or without drums. Every clip is
deterministic from its seed. Notes become amplitude envelopes on the synth's oscillator grid,
so partials are snapped to the equal-tempered grid (3rd harmonic = +19 semitones, 2 cents off).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from stave.generator.synth import HOP, LOWEST_MIDI, N_NOISE, N_OSC, SAMPLE_RATE, synthesize

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES = ("major", "minor")
TIMBRES = ("pluck", "organ", "bell", "square", "bass")
PATTERNS = ("arpeggio", "chords", "melody")
TONES = ("bright", "warm")
TIMBRE_WORDS = {
    "pluck": "plucked string",
    "organ": "organ",
    "bell": "bell",
    "square": "square lead",
    "bass": "bass",
}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 11)}  # harmonic minor
PROGRESSION = (0, 3, 4, 0)  # I-IV-V-I / i-iv-V-i: the V's leading tone tells minor from major
FRAME_RATE = SAMPLE_RATE / HOP


@dataclass(frozen=True)
class Timbre:
    offsets: tuple[int, ...]  # partials, in semitones above the note
    amps: tuple[float, ...]
    attack_s: float
    decay: tuple[float, ...]  # exponential decay rate per partial, 1/s
    sustain: bool  # held to the note's end (organ, square) or left to ring out


# 12 log2(k) rounded: harmonics 1..10 -> 0 12 19 24 28 31 34 36 38 40.
TIMBRE_SPECS = {
    "pluck": Timbre(
        (0, 12, 19, 24, 28, 31, 34, 36),
        (1, 0.5, 0.33, 0.25, 0.2, 0.17, 0.14, 0.12),
        0.004,
        (3, 4.5, 6, 7.5, 9, 10.5, 12, 13.5),
        False,
    ),
    "organ": Timbre((0, 12, 19, 24, 31, 36), (1, 0.7, 0.5, 0.35, 0.25, 0.15), 0.02, (0,) * 6, True),
    "bell": Timbre(
        (0, 18, 29, 38, 44), (1, 0.6, 0.4, 0.25, 0.15), 0.002, (1.2, 2, 3, 4.5, 6), False
    ),
    "square": Timbre(
        (0, 19, 28, 34, 38, 42), (1, 0.33, 0.2, 0.14, 0.11, 0.09), 0.01, (0.4,) * 6, True
    ),
    "bass": Timbre(
        (0, 12, 19, 24, 28, 31), (1, 0.5, 0.33, 0.25, 0.2, 0.17), 0.006, (2, 3, 4, 5, 6, 7), False
    ),
}


@dataclass(frozen=True)
class ClipLabels:
    timbre: str
    pattern: str
    tonic: int  # pitch class, 0 = C
    mode: str
    bpm: int
    drums: bool
    tone: str
    seed: int

    @property
    def key_name(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_labels(seed: int) -> ClipLabels:
    rng = random.Random(seed)
    return ClipLabels(
        timbre=rng.choice(TIMBRES),
        pattern=rng.choice(PATTERNS),
        tonic=rng.randrange(12),
        mode=rng.choice(MODES),
        bpm=rng.randint(60, 180),
        drums=rng.random() < 0.5,
        tone=rng.choice(TONES),
        seed=seed,
    )


def prompt_for(labels: ClipLabels) -> str:
    """e.g. 'bright bell arpeggio in D minor, 96 bpm, with drums'."""
    drums = "with drums" if labels.drums else "without drums"
    return (
        f"{labels.tone} {TIMBRE_WORDS[labels.timbre]} {labels.pattern} in {labels.key_name}, "
        f"{labels.bpm} bpm, {drums}"
    )


_KEY_RE = re.compile(r"\b([a-g]#?)\s+(major|minor)\b", re.IGNORECASE)
_BPM_RE = re.compile(r"\b(\d{2,3})\s*bpm\b", re.IGNORECASE)


def parse_prompt(prompt: str) -> dict[str, object]:
    """Key (tonic pitch class, mode), tempo and timbre named in a prompt, where present."""
    found: dict[str, object] = {}
    if match := _KEY_RE.search(prompt):
        found["tonic"] = NOTE_NAMES.index(match.group(1).upper())
        found["mode"] = match.group(2).lower()
    if match := _BPM_RE.search(prompt):
        found["bpm"] = int(match.group(1))
    lowered = prompt.lower()
    for timbre, word in TIMBRE_WORDS.items():
        if word in lowered:
            found["timbre"] = timbre
    return found


# -- notes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Note:
    start_s: float
    length_s: float
    midi: int
    velocity: float


def _chord(labels: ClipLabels, bar: int, base: int) -> list[int]:
    scale = SCALES[labels.mode]
    degree = PROGRESSION[bar % len(PROGRESSION)]
    return [base + scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]


def notes_for(labels: ClipLabels, seconds: float) -> list[Note]:
    rng = random.Random(labels.seed * 7919 + 1)
    beat = 60.0 / labels.bpm
    low = 36 if labels.timbre == "bass" else 55
    base = low + (labels.tonic - low) % 12
    scale = SCALES[labels.mode]
    notes: list[Note] = []
    n_beats = int(seconds / beat) + 1
    for b in range(n_beats):
        bar, pos = divmod(b, 4)
        chord = _chord(labels, bar, base)
        accent = 1.0 if pos == 0 else 0.8
        if labels.pattern == "chords":
            # Block chord on the beat, the root an octave up on the off-beat: every pattern
            # moves in eighth notes, which is what tells the beat from its half or double.
            notes += [Note(b * beat, 0.45 * beat, m, 0.55 * accent) for m in chord]
            notes.append(Note((b + 0.5) * beat, 0.45 * beat, chord[0] + 12, 0.3))
        elif labels.pattern == "arpeggio":
            up = [chord[0], chord[1], chord[2], chord[0] + 12]
            for half in (0, 1):
                m = up[(2 * pos + half) % 4]
                notes.append(
                    Note((b + half / 2) * beat, beat / 2, m, accent * (1 if half == 0 else 0.55))
                )
        else:  # melody: chord tones on the beat, scale steps between
            on = rng.choice(chord) + 12
            off_idx = (scale.index((on - base) % 12) + rng.choice((-1, 1))) % 7
            off = base + 12 + scale[off_idx]
            notes.append(Note(b * beat, beat / 2, on, accent))
            notes.append(Note((b + 0.5) * beat, beat / 2, off, 0.55))
    return [n for n in notes if n.start_s < seconds]


def _envelope(frames: int, start: int, attack: int, decay: float, hold: int | None) -> np.ndarray:
    """Amplitude from frame `start` to the clip's end: attack ramp, decay, release or cut."""
    length = frames - start
    t = np.arange(length, dtype=np.float32) / FRAME_RATE
    env = np.exp(-decay * t, dtype=np.float32)
    if attack > 0:
        env[:attack] *= np.linspace(0, 1, attack, endpoint=False, dtype=np.float32)
    if hold is not None:  # sustained: release over 40 ms after the note's end
        release = int(0.04 * FRAME_RATE)
        tail = np.clip(1 - (np.arange(length) - hold) / release, 0, 1).astype(np.float32)
        env *= np.where(np.arange(length) < hold, 1.0, tail).astype(np.float32)
    else:  # let it ring, but never past 1.5 s
        env[int(1.5 * FRAME_RATE) :] = 0
    return env


def controls_for(labels: ClipLabels, seconds: float) -> np.ndarray:
    """(N_OSC + N_NOISE, frames) synth amplitudes for the clip (before loudness scaling)."""
    frames = round(seconds * FRAME_RATE)
    controls = np.zeros((N_OSC + N_NOISE, frames), dtype=np.float32)
    spec = TIMBRE_SPECS[labels.timbre]
    tilt = 0.0 if labels.tone == "bright" else 1.2
    for note in notes_for(labels, seconds):
        start = int(note.start_s * FRAME_RATE)
        hold = int(note.length_s * FRAME_RATE) if spec.sustain else None
        for i, (offset, amp, decay) in enumerate(
            zip(spec.offsets, spec.amps, spec.decay, strict=True)
        ):
            k = note.midi + offset - LOWEST_MIDI
            if not 0 <= k < N_OSC:
                continue
            env = _envelope(frames, start, int(spec.attack_s * FRAME_RATE), decay, hold)
            controls[k, start:] += note.velocity * amp * (i + 1) ** -tilt * env
    if labels.drums:
        _add_drums(controls, labels, frames)
    return controls


def _add_drums(controls: np.ndarray, labels: ClipLabels, frames: int) -> None:
    beat = 60.0 / labels.bpm
    n_eighths = int(frames / FRAME_RATE / (beat / 2)) + 1
    for e in range(n_eighths):
        start = int(e * beat / 2 * FRAME_RATE)
        if start >= frames:
            break
        pos = (e // 2) % 4
        if e % 2 == 0 and pos in (0, 2):  # kick
            env = _envelope(frames, start, 1, 22.0, None)
            for k, amp in ((33 - LOWEST_MIDI, 1.2), (40 - LOWEST_MIDI, 0.4)):
                controls[k, start:] += amp * env
            env = _envelope(frames, start, 0, 60.0, None)
            controls[N_OSC + 0 : N_OSC + 3, start:] += 0.15 * env
        if e % 2 == 0 and pos in (1, 3):  # snare
            env = _envelope(frames, start, 0, 16.0, None)
            controls[N_OSC + 6 : N_OSC + 13, start:] += 0.09 * env
        env = _envelope(frames, start, 0, 55.0, None)  # hat on every eighth
        controls[N_OSC + 13 : N_OSC + 16, start:] += 0.05 * env


def render(labels: ClipLabels, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(audio float32 at SAMPLE_RATE, controls) for a clip, peak-normalised to 0.8."""
    controls = controls_for(labels, seconds)
    audio = synthesize(torch.from_numpy(controls)[None])[0].numpy()
    peak = float(np.abs(audio).max()) or 1.0
    scale = 0.8 / peak
    return (audio * scale).astype(np.float32), (controls * scale).astype(np.float32)
