"""Clip bounds from digital silence and the edge errors of word times (worker/devtools/word_timing.py)."""

from dataclasses import dataclass

import numpy as np
import pytest

from worker.devtools.word_timing import clip_bounds, edge_errors, silence_gaps

RATE = 1000


@dataclass
class W:
    start: float
    end: float


def _clips(*pieces: tuple[str, float]) -> np.ndarray:
    rng = np.random.default_rng(0)
    level = {"speech": 0.1, "gap": 1e-4}  # the gaps: digital silence after resampling
    parts = [rng.uniform(-level[kind], level[kind], round(seconds * RATE)) for kind, seconds in pieces]
    return np.concatenate(parts).astype(np.float32)


def test_gaps_of_near_zero_samples_bound_the_clips():
    samples = _clips(
        ("speech", 2.0), ("gap", 0.3), ("speech", 1.0), ("gap", 0.1), ("speech", 1.5), ("gap", 0.3), ("speech", 0.5)
    )
    assert silence_gaps(samples, RATE) == [(2.0, 2.3), (4.9, 5.2)]
    assert clip_bounds(samples, RATE) == [(0.0, 2.0), (2.3, 4.9), (5.2, 5.7)]  # the 0.1 s pause is inside a clip


def test_edge_errors_take_each_clips_first_and_last_word_by_midpoint():
    bounds = [(0.0, 2.0), (2.3, 4.9), (5.2, 5.7)]
    words = [W(0.1, 0.5), W(0.6, 1.8), W(2.5, 3.0), W(3.1, 5.0), W(4.95, 5.5)]  # the last word belongs to clip 3
    errors = edge_errors(bounds, words)
    assert errors.first_start == pytest.approx((0.1, 0.2, 0.25))
    assert errors.last_end == pytest.approx((0.2, 0.1, 0.2))
    assert errors.median_first_start == pytest.approx(0.2) and errors.clips_without_words == 0
    assert edge_errors(bounds, words[:2]).clips_without_words == 2
