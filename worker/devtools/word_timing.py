"""How well word times match known sentence boundaries (pure; used by the tests and cmd/bench --words).

The reference is ../shared/audio's LJ Speech concatenation: 32 clips joined with 0.3 s of digital
silence, so every clip's bounds can be read off the samples themselves (a run of near-zero samples;
resampling to 16 kHz leaves them within a few 1e-5). A clip's first word should start where the
clip starts, and its last word end where it ends; the error of each is what we report. The clips'
own lead-in and tail (LJ Speech trims them to a few tens of milliseconds) count as error.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Protocol

import numpy as np


class TimedWord(Protocol):
    start: float
    end: float


@dataclass(frozen=True)
class EdgeErrors:
    """Per clip, seconds between its bounds and its first word's start / last word's end."""

    first_start: tuple[float, ...]
    last_end: tuple[float, ...]
    clips_without_words: int

    @property
    def median_first_start(self) -> float:
        return median(self.first_start) if self.first_start else float("nan")

    @property
    def median_last_end(self) -> float:
        return median(self.last_end) if self.last_end else float("nan")


def silence_gaps(
    samples: np.ndarray, rate: int, *, max_level: float = 3e-4, min_seconds: float = 0.25
) -> list[tuple[float, float]]:
    """(start, end) in seconds of every run of at least `min_seconds` whose samples (floats in -1..1)
    stay below `max_level` (about -70 dBFS: speech pauses never get that quiet, digital silence does)."""
    quiet = np.abs(samples) < max_level
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
    runs = zip(edges[::2], edges[1::2], strict=True)
    return [(a / rate, b / rate) for a, b in runs if b - a >= min_seconds * rate]


def clip_bounds(samples: np.ndarray, rate: int, **gap_options) -> list[tuple[float, float]]:
    """(start, end) in seconds of the sounding stretches between the silence gaps."""
    bounds, start = [], 0.0
    for gap_start, gap_end in silence_gaps(samples, rate, **gap_options):
        if gap_start > start:
            bounds.append((start, gap_start))
        start = gap_end
    if start < samples.size / rate:
        bounds.append((start, samples.size / rate))
    return bounds


def edge_errors(bounds: Sequence[tuple[float, float]], words: Sequence[TimedWord]) -> EdgeErrors:
    """Each clip's words are those whose midpoint falls inside it (a word placed in the wrong clip
    therefore shows as a large error there, not as a missing one)."""
    first, last, empty = [], [], 0
    for start, end in bounds:
        inside = [w for w in words if start <= (w.start + w.end) / 2 < end]
        if not inside:
            empty += 1
            continue
        first.append(abs(inside[0].start - start))
        last.append(abs(inside[-1].end - end))
    return EdgeErrors(tuple(first), tuple(last), empty)
