"""Synthetic non-speech (noise, tones, clicks, digital silence) and the words a transcript puts on it.

Pure and deterministic: a `Sound` (kind, length, RMS level, seed) always gives the same samples,
so a benchmark built from them is the same on every machine. Used by cmd/bench --vad (issue 18:
speech detection and the hallucination guard) and its tests.

Which words lie on non-speech: a word placed (by its time) inside a gap is not enough, since
whisper often times real words into the noise before them (a segment, or even a word, that
starts with the noise). A word on non-speech is one placed inside a gap that the WER's alignment
against the reference also finds nobody said (an insertion).

The kinds are what a speech detector meets between the words of real recordings:
- pink, brown: white noise filtered to 1/f and 1/f^2 power (-3 and -6 dB per octave above 20 Hz),
  shaped in the frequency domain; room tone, fans, traffic, a hiss of tape;
- sines: a steady chord of four sines (C major, random phases), like music on hold;
- beep: a 1 kHz tone, 0.5 s on and 0.5 s off with 10 ms ramps (a hold or dial beep);
- clicks: decaying 1 ms clicks about 10 per second, their spacing jittered (keyboard, a ticking);
- silence: digital zeros (its level is ignored).

Levels are RMS in dBFS over the whole sound (speech in ../shared/audio sits at -17 to -31 dBFS).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from worker.devtools.accuracy import insertions, normalize

KINDS = ("pink", "brown", "sines", "beep", "clicks", "silence")
LOWEST_SHAPED_HZ = 20.0  # below it the noises stay flat (no DC drift, no rumble under the audio band)
CHORD_HZ = (261.63, 329.63, 392.00, 523.25)
BEEP_HZ, BEEP_ON, BEEP_PERIOD, BEEP_RAMP = 1000.0, 0.5, 1.0, 0.01
CLICK_INTERVAL, CLICK_JITTER, CLICK_DECAY = 0.1, 0.03, 0.001


@dataclass(frozen=True)
class Sound:
    """A stretch of one kind of non-speech; `dbfs` is its RMS level (ignored for silence)."""

    kind: str
    seconds: float
    dbfs: float = -30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.seconds <= 0:
            raise ValueError(f"a sound lasts > 0 s, not {self.seconds}")

    @property
    def name(self) -> str:
        return self.kind if self.kind == "silence" else f"{self.kind} {self.dbfs:g} dBFS"


@dataclass(frozen=True)
class Gap:
    """Where a sound lies in a recording, in seconds from its start."""

    start: float
    end: float
    sound: Sound


class TimedText(Protocol):
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class TimedWord:
    """A word of a transcript as an engine times it (its text as the engine writes it)."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class PlacedWord:
    """One word as the WER counts it (normalized), at a time; `inserted`: no word said matches it."""

    text: str
    time: float
    inserted: bool


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (-inf for silence)."""
    power = float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    return 10 * np.log10(power) if power > 0 else float("-inf")


def synthesize(sound: Sound, rate: int) -> np.ndarray:
    """The sound as float32 samples at `rate`, scaled to its RMS level. Raises ValueError if that clips."""
    n = round(sound.seconds * rate)
    if sound.kind == "silence":
        return np.zeros(n, dtype=np.float32)
    rng = np.random.default_rng(sound.seed)
    raw = _RAW[sound.kind](n, rate, rng)
    scaled = raw * (10 ** (sound.dbfs / 20) / np.sqrt(np.mean(np.square(raw))))
    if np.max(np.abs(scaled)) >= 1.0:
        raise ValueError(f"{sound.name} clips: its peaks exceed full scale at that RMS level")
    return scaled.astype(np.float32)


def assemble(pieces: Sequence[np.ndarray | Sound], rate: int) -> tuple[np.ndarray, tuple[Gap, ...]]:
    """The pieces end to end (arrays as they are, sounds synthesized) and where each sound lies."""
    parts, gaps, at = [], [], 0
    for piece in pieces:
        samples = synthesize(piece, rate) if isinstance(piece, Sound) else np.asarray(piece, dtype=np.float32)
        if isinstance(piece, Sound):
            gaps.append(Gap(at / rate, (at + samples.size) / rate, piece))
        parts.append(samples)
        at += samples.size
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)), tuple(gaps)


def spread(segments: Iterable[TimedText]) -> list[TimedWord]:
    """Each segment's words (split at spaces), spread over its span in proportion to their length: the
    word times of an engine that gives segment times only."""
    spread_words = []
    for segment in segments:
        words = segment.text.split()
        total, before = sum(len(w) + 1 for w in words), 0
        for word in words:
            start = segment.start + before / total * (segment.end - segment.start)
            before += len(word) + 1
            spread_words.append(TimedWord(start, segment.start + before / total * (segment.end - segment.start), word))
    return spread_words


def place(words: Iterable[TimedText], reference: str | None) -> list[PlacedWord]:
    """An engine's timed words as the WER's words (" 1961." -> nineteen, sixty, one), each at the
    midpoint of the engine's word, marked when the WER's alignment against `reference` finds no word
    said for it (without a reference, nothing was said: every word is inserted)."""
    split = [(normalized, (w.start + w.end) / 2) for w in words for normalized in normalize(w.text).split()]
    inserted = insertions(reference, [w for w, _ in split]) if reference is not None else [True] * len(split)
    return [PlacedWord(w, time, flag) for (w, time), flag in zip(split, inserted, strict=True)]


def words_in_gaps(words: Iterable[PlacedWord], gaps: Sequence[Gap], *, tolerance: float) -> dict[Gap, list[PlacedWord]]:
    """Per gap, the words placed inside it, at least `tolerance` seconds from its edges (so that a word
    of the speech next to it, timed a little early or late, is not taken for one on the gap)."""
    found: dict[Gap, list[PlacedWord]] = {gap: [] for gap in gaps}
    for word in words:
        for gap in gaps:
            if gap.start + tolerance <= word.time <= gap.end - tolerance:
                found[gap].append(word)
                break
    return found


# --- the raw shapes, before scaling ------------------------------------------------------------


def _shaped_noise(n: int, rate: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """White noise whose power falls as 1/f**exponent above LOWEST_SHAPED_HZ (flat below, no DC)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.maximum(np.fft.rfftfreq(n, 1 / rate), LOWEST_SHAPED_HZ)
    spectrum *= frequencies ** (-exponent / 2)
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def _pink(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    return _shaped_noise(n, rate, rng, 1.0)


def _brown(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    return _shaped_noise(n, rate, rng, 2.0)


def _sines(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / rate
    phases = rng.uniform(0, 2 * np.pi, len(CHORD_HZ))
    return sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(CHORD_HZ, phases, strict=True))


def _beep(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / rate
    into_period = (t + rng.uniform(0, BEEP_PERIOD)) % BEEP_PERIOD  # where in its on/off cycle it starts
    envelope = np.clip(np.minimum(into_period, BEEP_ON - into_period) / BEEP_RAMP, 0, 1)
    return envelope * np.sin(2 * np.pi * BEEP_HZ * t)


def _clicks(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    shape = np.exp(-np.arange(round(5 * CLICK_DECAY * rate)) / (CLICK_DECAY * rate))
    at = rng.uniform(0, CLICK_INTERVAL)
    while (start := round(at * rate)) < n:
        piece = shape[: n - start] * rng.choice((-1.0, 1.0))
        out[start : start + piece.size] += piece
        at += CLICK_INTERVAL + rng.uniform(-CLICK_JITTER, CLICK_JITTER)
    return out


_RAW = {"pink": _pink, "brown": _brown, "sines": _sines, "beep": _beep, "clicks": _clicks}
