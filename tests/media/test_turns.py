"""Speaker turns from embeddings (pure): windows, clustering, turns, labels by overlap."""

import numpy as np

from worker.media.turns import Turn, TurnOptions, cluster, speaker_of, turns, windows

RATE = 16000


def voices(*counts: int, seed: int = 0) -> np.ndarray:
    """Unit embeddings near one random direction per voice, `counts[k]` of voice k, in order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), 256))
    rows = [c + 0.25 * rng.normal(size=(n, 256)) * np.linalg.norm(c) / 16 for c, n in zip(centres, counts, strict=True)]
    stacked = np.concatenate(rows)
    return stacked / np.linalg.norm(stacked, axis=1, keepdims=True)


def test_windows_cover_each_region_without_crossing_its_ends():
    found = windows([(0, 4 * RATE), (5 * RATE, 5 * RATE + RATE), (7 * RATE, 7 * RATE + 4000)])
    assert found[0] == (0, int(1.6 * RATE)) and found[-2][1] == 4 * RATE  # the last one ends with the region
    assert (5 * RATE, 6 * RATE) in found  # a short region is one window
    assert all(not (s < 5 * RATE < e) for s, e in found)  # none across a gap
    assert all(e <= 6 * RATE or s >= 7 * RATE for s, e in found if s >= 5 * RATE)
    assert not any(s == 7 * RATE for s, _ in found)  # 0.25 s: too short for a window


def test_the_count_is_estimated_or_given_and_strays_join_a_real_speaker():
    embeddings = voices(10, 8, 12)
    assert len(set(cluster(embeddings, TurnOptions()).tolist())) == 3
    assert len(set(cluster(embeddings, TurnOptions(), num_speakers=2).tolist())) == 2
    assert len(set(cluster(embeddings, TurnOptions(), max_speakers=2).tolist())) == 2
    with_stray = np.concatenate([embeddings, voices(1, seed=9)])
    assert len(set(cluster(with_stray, TurnOptions()).tolist())) == 3


def test_turns_are_numbered_in_order_of_first_appearance_and_short_flips_smoothed():
    spans = [(i * 8000, i * 8000 + 25600) for i in range(20)]  # 1.6 s windows 0.5 s apart
    labels = np.array([2] * 10 + [0] * 10)
    labels[4] = 0  # one stray window inside the first speaker's stretch
    embeddings = voices(10, 10)[[*range(10), *range(10, 20)]]
    found = turns(spans, embeddings, labels, TurnOptions(min_turn_seconds=1.0))
    assert [t.speaker for t in found] == [0, 1]
    assert abs(found[0].end / RATE - 5.8) < 1.0


def test_a_span_gets_the_speaker_it_overlaps_most_else_the_nearest():
    found = [Turn(0, 2 * RATE, 0), Turn(2 * RATE, 5 * RATE, 1)]
    assert speaker_of(found, 1.5, 2.2) == 0
    assert speaker_of(found, 1.9, 3.0) == 1
    assert speaker_of(found, 6.0, 6.5) == 1
    assert speaker_of([], 0, 1) is None
