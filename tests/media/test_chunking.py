"""Silence-aligned chunking, on synthetic signals with known pauses and on real speech."""

import itertools

import numpy as np
import pytest

from worker.media.audio import decode_audio
from worker.media.chunking import SAMPLE_RATE, ChunkingOptions, split

RNG = np.random.default_rng(7)


def burst(seconds: float, level: float = 0.3) -> np.ndarray:
    """Speech-like sound: noise with a syllable-rate (4 Hz) envelope that never goes silent."""
    n = int(seconds * SAMPLE_RATE)
    envelope = 0.6 + 0.4 * np.abs(np.sin(np.linspace(0, 4 * np.pi * seconds, n)))
    return (RNG.standard_normal(n) * level * envelope).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return (RNG.standard_normal(int(seconds * SAMPLE_RATE)) * 1e-4).astype(np.float32)


def build(parts: list[tuple[str, float]]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate ('speech'|'pause', seconds) parts; returns samples and the pause intervals."""
    pieces, pauses, t = [], [], 0.0
    for kind, seconds in parts:
        pieces.append(burst(seconds) if kind == "speech" else silence(seconds))
        if kind == "pause":
            pauses.append((t, t + seconds))
        t += seconds
    return np.concatenate(pieces), pauses


def in_pause(t: float, pauses: list[tuple[float, float]]) -> bool:
    return any(start <= t <= end for start, end in pauses)


def test_cuts_fall_in_pauses_and_chunks_fit_one_window():
    # 2 min of "speech" in 4-7 s phrases separated by 0.4 s pauses.
    lengths = RNG.uniform(4, 7, size=22)
    parts = [p for length in lengths for p in (("speech", float(length)), ("pause", 0.4))][:-1]
    samples, pauses = build(parts)

    chunks = split(samples)

    assert len(chunks) >= 4
    assert all(c.seconds <= 29.0 for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert in_pause(before.end / SAMPLE_RATE, pauses) and in_pause(after.start_seconds, pauses)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.name for c in chunks[:2]] == ["chunk_0000.wav", "chunk_0001.wav"]


def test_long_leading_and_trailing_silence_is_not_transcribed():
    samples, _ = build([("pause", 6.0), ("speech", 5.0), ("pause", 8.0)])

    (chunk,) = split(samples)

    assert 5.5 < chunk.start_seconds < 6.0 and 11.0 < chunk.end / SAMPLE_RATE < 11.5


def test_long_internal_silence_is_left_out():
    samples, _ = build([("speech", 5.0), ("pause", 10.0), ("speech", 5.0)])

    chunks = split(samples)

    assert sum(c.seconds for c in chunks) < 11.0
    assert chunks[0].end / SAMPLE_RATE < 6.0 and chunks[-1].start_seconds > 14.0


def test_silence_only_gives_no_chunks():
    assert split(silence(20.0)) == []
    assert split(np.zeros(5 * SAMPLE_RATE, dtype=np.float32)) == []


def test_speech_without_any_pause_is_still_cut_within_the_limit():
    samples, _ = build([("speech", 75.0)])

    chunks = split(samples)

    assert all(c.seconds <= 29.0 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == samples.size
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))  # nothing lost between cuts


@pytest.mark.parametrize("max_seconds", [10.0, 20.0])
def test_max_seconds_is_configurable(max_seconds):
    samples, _ = build([p for _ in range(12) for p in (("speech", 3.0), ("pause", 0.3))])

    assert all(c.seconds <= max_seconds for c in split(samples, ChunkingOptions(max_seconds=max_seconds)))


def test_real_speech_is_cut_only_where_it_is_quiet(audio_dir):
    samples = decode_audio(audio_dir / "ljspeech_LJ001-0001_to_0032_concat.wav")

    chunks = split(samples)

    assert len(chunks) >= 8
    for before, _after in itertools.pairwise(chunks):
        window = samples[before.end - 800 : before.end + 800]  # 100 ms around the cut
        assert 20 * np.log10(np.sqrt(np.mean(window**2)) + 1e-10) < -40
