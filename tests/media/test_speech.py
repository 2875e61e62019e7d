"""Speech regions and chunks of speech from per-window probabilities (pure: arrays in, Chunks out)."""

import numpy as np
import pytest

from worker.media.chunking import Chunk
from worker.media.speech import WINDOW, VadOptions, speech_chunks, speech_regions, speech_windows

RATE = 16000
PER_SECOND = RATE / WINDOW  # 31.25 windows a second


def probs(*runs: tuple[float, float]) -> np.ndarray:
    """Probabilities from (seconds, value) runs (boundaries at w() of their cumulative times)."""
    out, elapsed = [], 0.0
    for seconds, value in runs:
        out.append(np.full(w(elapsed + seconds) - w(elapsed), value, dtype=np.float32))
        elapsed += seconds
    return np.concatenate(out)


def w(seconds: float) -> int:
    return int(round(seconds * PER_SECOND))


def test_a_region_starts_at_the_threshold_and_ends_after_a_long_enough_silence():
    p = probs((1, 0.0), (2, 0.9), (1, 0.0), (3, 0.0))
    assert speech_windows(p, VadOptions(min_silence_ms=500)) == [(w(1), w(3))]


def test_hysteresis_a_dip_above_the_off_threshold_does_not_end_speech():
    # 0.4 is under the 0.5 onset but over the 0.35 off threshold: still speech.
    p = probs((1, 0.0), (1, 0.9), (2, 0.4), (1, 0.9), (2, 0.0))
    assert speech_windows(p, VadOptions(min_silence_ms=500)) == [(w(1), w(5))]
    # Below the off threshold for as long, it does end.
    p = probs((1, 0.0), (1, 0.9), (2, 0.2), (1, 0.9), (2, 0.0))
    assert speech_windows(p, VadOptions(min_silence_ms=500)) == [(w(1), w(2)), (w(4), w(5))]


def test_silences_shorter_than_min_silence_are_bridged_and_short_bursts_dropped():
    p = probs((1, 0.0), (1, 0.9), (0.3, 0.0), (1, 0.9), (2, 0.0), (0.1, 0.9), (2, 0.0))
    assert speech_windows(p, VadOptions(min_silence_ms=500, min_speech_ms=250)) == [(w(1), w(3.3))]


def test_speech_running_to_the_end_is_closed_there():
    p = probs((1, 0.0), (2, 0.9))
    assert speech_windows(p, VadOptions()) == [(w(1), p.size)]


def test_regions_are_padded_clipped_to_the_recording_and_merged_when_they_touch():
    p = probs((0.1, 0.9), (0.9, 0.0), (1, 0.9), (0.7, 0.0), (1, 0.9), (2, 0.0))
    n = p.size * WINDOW
    regions = speech_regions(p, n, VadOptions(min_silence_ms=500, min_speech_ms=0, speech_pad_ms=300))
    # The first region clipped at 0; the second and third are 0.7 s apart (< 2 x 0.3 s? no: 0.7 > 0.6).
    assert regions[0][0] == 0
    assert len(regions) == 3
    merged = speech_regions(p, n, VadOptions(min_silence_ms=500, min_speech_ms=0, speech_pad_ms=400))
    assert len(merged) == 2 and merged[1] == (regions[1][0] - 1600, regions[2][1] + 1600)


def test_no_speech_no_chunks():
    assert speech_chunks(probs((60, 0.1)), 60 * RATE, VadOptions(), max_seconds=24) == []


def test_chunks_hold_only_speech_and_padding_and_at_most_max_seconds_of_audio():
    # Ten 3 s utterances with 10 s of non-speech between them.
    p = probs(*[run for _ in range(10) for run in ((10, 0.0), (3, 0.95))], (10, 0.0))
    n = p.size * WINDOW
    options = VadOptions(speech_pad_ms=300)
    chunks = speech_chunks(p, n, options, max_seconds=24)
    assert all(c.seconds <= 24 for c in chunks)
    assert len(chunks) == 2  # 3.6 s a region: six fit in 24 s
    kept = sum(c.n_samples for c in chunks)
    assert kept == pytest.approx(10 * 3.6 * RATE, abs=10 * WINDOW)
    for chunk in chunks:
        for (_, end), (start, _) in zip(chunk.spans, chunk.spans[1:], strict=False):
            assert start - end >= (10 - 0.6) * RATE - 2 * WINDOW  # the gaps are cut out of the chunk


def test_a_region_longer_than_a_chunk_is_cut_where_speech_is_least_likely():
    # 50 s of speech with a brief low-probability dip at 20 s (not long enough to end the region).
    p = probs((1, 0.0), (20, 0.95), (0.2, 0.4), (29.8, 0.95), (2, 0.0))
    chunks = speech_chunks(p, p.size * WINDOW, VadOptions(), max_seconds=24)
    assert len(chunks) == 3 and all(c.seconds <= 24 for c in chunks)
    first_cut = chunks[0].end / RATE
    assert 20.95 <= first_cut <= 21.25, first_cut  # inside the dip (1 s lead-in + 20 s of speech)
    assert chunks[1].start == chunks[0].end


def test_absolute_time_maps_through_the_pieces_and_their_seams():
    chunk = Chunk.of_pieces(0, [(RATE * 10, RATE * 12), (RATE * 30, RATE * 33)])
    assert chunk.start == RATE * 10 and chunk.end == RATE * 33 and chunk.seconds == 5
    assert chunk.absolute(0.0) == 10.0
    assert chunk.absolute(1.5) == 11.5
    assert chunk.absolute(2.0) == 30.0  # a start at the seam: the later piece
    assert chunk.absolute(2.0, ending=True) == 12.0  # an end at the seam: the earlier piece
    assert chunk.absolute(4.0) == 32.0
    assert chunk.absolute(9.0, ending=True) == 33.0  # held inside the chunk
    assert chunk.absolute(-1.0) == 10.0


def test_contiguous_pieces_make_one_plain_chunk():
    chunk = Chunk.of_pieces(3, [(0, 100), (100, 250)])
    assert chunk == Chunk(3, 0, 250)
    assert chunk.spans == ((0, 250),)


def test_a_word_across_a_seam_stays_in_the_piece_holding_most_of_it_and_a_segment_may_span_pieces():
    chunk = Chunk.of_pieces(0, [(RATE * 10, RATE * 12), (RATE * 30, RATE * 33)])
    assert chunk.place(1.8, 2.1, whole=True) == (11.8, 12.0)  # mostly before the seam
    assert chunk.place(1.9, 2.5, whole=True) == (30.0, 30.5)  # mostly after it
    assert chunk.place(0.5, 4.0) == (10.5, 32.0)  # a segment: each end where it falls


def test_a_segment_end_a_little_past_a_seam_is_not_stretched_over_the_cut():
    chunk = Chunk.of_pieces(0, [(RATE * 10, RATE * 12), (RATE * 30, RATE * 33)])
    assert chunk.place(0.5, 2.3) == (10.5, 12.0)  # ends 0.3 s into the next piece: whisper's slack
    assert chunk.place(1.8, 4.0) == (30.0, 32.0)  # starts 0.2 s before the seam
    assert chunk.place(0.5, 4.0) == (10.5, 32.0)  # truly across: both ends where they fall
