"""Synthetic non-speech and the words a transcript puts on it (worker/devtools/nonspeech.py)."""

from dataclasses import dataclass

import numpy as np
import pytest

from worker.devtools.nonspeech import KINDS, Sound, assemble, place, rms_dbfs, spread, synthesize, words_in_gaps

RATE = 16000


@dataclass(frozen=True)
class Timed:
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


def test_words_in_gaps_are_those_placed_inside_away_from_the_edges():
    _, gaps = assemble([Sound("silence", 10.0), np.zeros(10 * RATE), Sound("pink", 10.0)], RATE)  # gaps 0-10, 20-30
    words = [
        Timed(0.0, 0.4, " Thank"),  # within 0.5 s of the gap's start: not counted
        Timed(4.0, 6.0, " [Music]"),  # normalized to one word, as the WER sees it
        Timed(9.0, 9.6, " And"),  # midpoint 9.3 s: inside
        Timed(9.5, 10.3, " so"),  # midpoint 9.9 s: too near the edge
        Timed(10.3, 10.6, " my"),  # speech
        Timed(25.0, 25.2, " 1961."),  # three words
        Timed(29.4, 30.2, " you"),  # midpoint 29.8 s: too near the end
    ]

    placed = place(words, None)
    found = words_in_gaps(placed, gaps, tolerance=0.5)

    assert all(w.inserted for w in placed)  # no reference: nothing was said
    assert [w.text for w in found[gaps[0]]] == ["music", "and"]
    assert [(w.text, w.time) for w in found[gaps[1]]] == [("nineteen", 25.1), ("sixty", 25.1), ("one", 25.1)]
    assert {g: [w.text for w in ws] for g, ws in words_in_gaps(placed, gaps, tolerance=0.0).items()} == {
        gaps[0]: ["thank", "music", "and", "so"],
        gaps[1]: ["nineteen", "sixty", "one", "you"],
    }


def test_place_marks_the_words_nobody_said():
    words = [Timed(0.0, 1.0, " Thank"), Timed(1.0, 2.0, " you."), Timed(8.0, 9.0, " And"), Timed(9.0, 9.5, " so,")]
    words += [Timed(9.5, 10.0, " my"), Timed(10.0, 10.5, " fellow"), Timed(11.0, 12.0, " Americans")]

    placed = place(words, "And so, my fellow Americans")

    assert [(w.text, w.inserted) for w in placed] == [
        ("thank", True),
        ("you", True),
        ("and", False),
        ("so", False),
        ("my", False),
        ("fellow", False),
        ("americans", False),
    ]


def test_spread_places_a_segments_words_by_their_length():
    words = spread([Timed(10.0, 13.0, " ask not why"), Timed(13.0, 14.0, "  "), Timed(14.0, 15.0, "a country")])

    assert [(w.text, w.start, w.end) for w in words] == [
        ("ask", 10.0, pytest.approx(11.0)),
        ("not", pytest.approx(11.0), pytest.approx(12.0)),
        ("why", pytest.approx(12.0), 13.0),
        ("a", 14.0, pytest.approx(14.2)),  # 2 of 10 characters, counting a space after each word
        ("country", pytest.approx(14.2), 15.0),
    ]
