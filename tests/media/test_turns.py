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


def test_known_speakers_are_paired_one_each_and_only_when_close_enough():
    from worker.media.turns import named

    centres = voices(1, 1, 1, seed=4)
    heard = {0: centres[0], 1: centres[1]}
    references = np.stack([centres[1], centres[2], 0.9 * centres[0] + 0.1 * centres[1]])
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    assert named(heard, references, least=0.8) == {0: 2, 1: 0}  # each voice its own clip, the absent one unused
    assert named(heard, references[1:2], least=0.8) == {}  # a clip like nobody here names nobody
    assert named({}, references, least=0.8) == {}


def test_windows_that_clearly_sound_like_a_known_speaker_are_split_out_of_the_cluster_they_fell_in():
    from worker.media.turns import anchored

    embeddings = voices(10, 6, 8, seed=5)
    merged = np.array([0] * 16 + [1] * 8)  # the count estimate put voice 1 in voice 0's cluster
    reference = embeddings[10:16].mean(axis=0)
    reference /= np.linalg.norm(reference)
    split = anchored(merged, embeddings, reference[None, :], TurnOptions())
    assert len(set(split[10:16].tolist())) == 1 and split[10] not in (0, 1)
    assert (split[:10] == 0).all() and (split[16:] == 1).all()
    too_few = TurnOptions(min_speaker_windows=7)  # 6 windows: no speaker of their own
    assert (anchored(merged, embeddings, reference[None, :], too_few) == merged).all()
