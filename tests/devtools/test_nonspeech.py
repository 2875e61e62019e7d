"""Synthetic non-speech and the words a transcript puts on it (worker/devtools/nonspeech.py)."""

from dataclasses import dataclass

import numpy as np
import pytest

from worker.devtools.nonspeech import KINDS, Sound, assemble, rms_dbfs, synthesize, words_in_gaps

RATE = 16000


@dataclass(frozen=True)
class Seg:
    start: float
    end: float
    text: str


def _octave_slope_db(samples: np.ndarray) -> float:
    """Power change per octave between 200-400 Hz and 1.6-3.2 kHz (three octaves up)."""
    frequencies = np.fft.rfftfreq(samples.size, 1 / RATE)
    power = np.abs(np.fft.rfft(samples)) ** 2
    low = power[(frequencies >= 200) & (frequencies < 400)].mean()
    high = power[(frequencies >= 1600) & (frequencies < 3200)].mean()
    return 10 * np.log10(high / low) / 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_sound_is_the_same_for_its_seed_and_another_for_another_seed(kind):
    first, again = synthesize(Sound(kind, 3.0, seed=7), RATE), synthesize(Sound(kind, 3.0, seed=7), RATE)
    other = synthesize(Sound(kind, 3.0, seed=8), RATE)

    assert first.dtype == np.float32 and first.size == 3 * RATE
    assert np.array_equal(first, again)
    assert kind == "silence" or not np.array_equal(first, other)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "silence"])
@pytest.mark.parametrize("dbfs", [-25.0, -35.0, -45.0])
def test_every_sound_has_its_rms_level_without_clipping(kind, dbfs):
    samples = synthesize(Sound(kind, 20.0, dbfs, seed=1), RATE)

    assert rms_dbfs(samples) == pytest.approx(dbfs, abs=0.01)
    assert np.max(np.abs(samples)) < 1.0


def test_silence_is_digital_zeros_whatever_its_level():
    samples = synthesize(Sound("silence", 2.0, -10.0), RATE)

    assert not samples.any() and rms_dbfs(samples) == float("-inf")


def test_pink_and_brown_noise_fall_3_and_6_db_per_octave():
    assert _octave_slope_db(synthesize(Sound("pink", 10.0, seed=2), RATE)) == pytest.approx(-3.0, abs=0.3)
    assert _octave_slope_db(synthesize(Sound("brown", 10.0, seed=2), RATE)) == pytest.approx(-6.0, abs=0.3)


def test_tones_and_clicks_are_what_they_say():
    beep = synthesize(Sound("beep", 4.0, seed=3), RATE)
    loud_frames = np.sqrt(np.mean(beep.reshape(-1, 160) ** 2, axis=1)) > 1e-3  # 10 ms frames
    spectrum = np.abs(np.fft.rfft(beep))
    assert loud_frames.mean() == pytest.approx(0.5, abs=0.03)  # 0.5 s on, 0.5 s off
    assert np.fft.rfftfreq(beep.size, 1 / RATE)[spectrum.argmax()] == pytest.approx(1000.0, abs=1.0)

    clicks = synthesize(Sound("clicks", 10.0, seed=3), RATE)
    onsets = np.flatnonzero(np.diff((np.abs(clicks) > 0.5 * np.abs(clicks).max()).astype(int)) == 1)
    assert 80 <= onsets.size <= 110  # about 10 a second


def test_assemble_records_where_each_sound_lies():
    speech = [np.full(RATE, 0.1, dtype=np.float32), np.full(2 * RATE, 0.2, dtype=np.float32)]
    sounds = [Sound("pink", 1.5, seed=1), Sound("silence", 0.5), Sound("beep", 2.0, -25.0, seed=2)]

    samples, gaps = assemble([sounds[0], speech[0], sounds[1], speech[1], sounds[2]], RATE)

    assert samples.size == round(7.0 * RATE)
    assert [(g.start, g.end, g.sound) for g in gaps] == [
        (0.0, 1.5, sounds[0]),
        (2.5, 3.0, sounds[1]),
        (5.0, 7.0, sounds[2]),
    ]
    for gap in gaps:
        inside = samples[round(gap.start * RATE) : round(gap.end * RATE)]
        assert np.array_equal(inside, synthesize(gap.sound, RATE))
    assert np.all(samples[round(1.5 * RATE) : round(2.5 * RATE)] == np.float32(0.1))
    assert np.all(samples[round(3.0 * RATE) : round(5.0 * RATE)] == np.float32(0.2))


def test_words_in_gaps_counts_words_whose_midpoint_is_inside_away_from_the_edges():
    _, gaps = assemble([Sound("silence", 10.0), np.zeros(10 * RATE), Sound("pink", 10.0)], RATE)  # gaps 0-10, 20-30
    segments = [
        Seg(0.0, 0.6, "Thank you."),  # within 0.5 s of the gap's start: not counted
        Seg(4.0, 6.0, "[Music]"),  # normalized to one word, as the WER sees it
        Seg(9.0, 12.0, "and so my fellow"),  # by length: "and" at 9.35 s counts, "so" (9.97 s) is too near
        Seg(12.0, 18.0, "Americans ask not"),  # speech
        Seg(25.0, 27.0, "you you you, you!"),
    ]

    found = words_in_gaps(segments, gaps)

    assert found[gaps[0]] == ["music", "and"]
    assert found[gaps[1]] == ["you", "you", "you", "you"]
    assert words_in_gaps(segments, gaps, tolerance=0.0)[gaps[0]] == ["thank", "you", "music", "and", "so"]
