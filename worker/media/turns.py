"""Speaker turns from voice embeddings (pure numpy/scipy): windows of speech in, who spoke when out.

How (the usual clustering diarization, as in pyannote's and WhisperX's pipelines, at small scale):
1. speech regions (the VAD's) are cut into overlapping windows of about 1.6 s, what the voice encoder
   was trained on (worker.engine.voices embeds each);
2. the windows' embeddings are clustered by cosine distance, average linkage, cut at a distance
   threshold (speakers counted) or into exactly the given number; the count is held within
   min/max_speakers;
3. each 0.1 s step of speech gets the speaker of the windows covering it (their summed similarity to
   each cluster's centroid), short flips are smoothed out, and runs of one speaker are the turns.

Memory is bounded whatever the recording's length: at most MAX_CLUSTERED windows are clustered
(evenly spaced ones of a longer recording); every window is then given its nearest centroid.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.ndimage import uniform_filter1d
from scipy.optimize import linear_sum_assignment

from worker.media.speech import VadOptions, speech_regions

SAMPLE_RATE = 16000
WINDOW_SECONDS = 1.6
HOP_SECONDS = 0.8
MIN_WINDOW_SECONDS = 0.5  # a region shorter than this gives no window of its own
STEP_SECONDS = 0.1  # the grid turns are decided on
MAX_CLUSTERED = 2000  # windows clustered at most (the distance matrix is this squared)


KNOWN_SIMILARITY = 0.8
KNOWN_WINDOW_SIMILARITY = 0.7


@dataclass(frozen=True)
class TurnOptions:
    """Clustering tuning (cmd/bench --diarize measures it; docs/accuracy.md)."""

    # Average-linkage cosine distance under which two groups of windows are one speaker: measured with
    # the GE2E encoder on ../shared/audio, 0.12-0.29 within a speaker, 0.49-0.50 between the closest
    # two pairs of different speakers (cmd/bench --diarize; docs/accuracy.md).
    threshold: float = 0.4
    # Flips of the speaker shorter than this are smoothed out.
    min_turn_seconds: float = 1.0
    # With the count estimated, a cluster of fewer windows (0.8 s apart) is no speaker of its own.
    min_speaker_windows: int = 3
    # Cosine similarity a speaker's voice (the mean of their windows) must reach with a known speaker's
    # reference clip to take their name: chosen on ../shared/audio's voices, checked on held-out ones
    # (cmd/bench --known-speakers; docs/accuracy.md).
    known_similarity: float = KNOWN_SIMILARITY
    # A window at least this similar to a known speaker's clip (and more than to any other clip) is
    # theirs, whatever cluster it fell in: a voice the count estimate merged with another is split out.
    known_window_similarity: float = KNOWN_WINDOW_SIMILARITY
    # diarize "channels" with word times: a channel's segment is cut where its speaker pauses this long.
    channel_pause_seconds: float = 1.0


@dataclass(frozen=True)
class Turn:
    """Samples [start, end) spoken by speaker number `speaker` (0 = the first to speak)."""

    start: int
    end: int
    speaker: int


# Pauses this long separate the stretches windows are cut from (a turn often changes at a pause).
PAUSE_MS = 150


def voiced_regions(probabilities: np.ndarray, n_samples: int, options: VadOptions) -> list[tuple[int, int]]:
    """Speech split at every pause of PAUSE_MS or more, unpadded: the stretches speaker windows are cut
    from (the chunks' regions bridge pauses and carry padding; a window across a pause may hold two voices)."""
    fine = dataclasses.replace(options, min_silence_ms=PAUSE_MS, speech_pad_ms=0, min_speech_ms=0)
    return speech_regions(probabilities, n_samples, fine)


def windows(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) sample windows over speech regions: WINDOW_SECONDS long, HOP_SECONDS apart, the last
    one of a region ending with it; a region shorter than a window is one window of its own length."""
    size, hop, least = (int(s * SAMPLE_RATE) for s in (WINDOW_SECONDS, HOP_SECONDS, MIN_WINDOW_SECONDS))
    found = []
    for start, end in regions:
        if end - start < least:
            continue
        if end - start <= size:
            found.append((start, end))
            continue
        starts = list(range(start, end - size + 1, hop))
        if starts[-1] + size < end:
            starts.append(end - size)
        found += [(s, s + size) for s in starts]
    return found


def cluster(
    embeddings: np.ndarray,
    options: TurnOptions,
    *,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int | None = None,
) -> np.ndarray:
    """A speaker number for each (unit-norm) embedding."""
    n = embeddings.shape[0]
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1 or num_speakers == 1:
        return np.zeros(n, dtype=int)
    chosen = np.linspace(0, n - 1, min(n, MAX_CLUSTERED)).round().astype(int)
    tree = linkage(embeddings[chosen], method="average", metric="cosine")
    if num_speakers is None:
        labels = fcluster(tree, t=options.threshold, criterion="distance")
        count = len(_real(labels, options))
        low, high = min_speakers, max_speakers or count
        wanted = min(max(count, low), high)
    else:
        wanted = num_speakers
    wanted = min(wanted, chosen.size)
    # A speaker heard in fewer than min_speaker_windows windows is a stray (a cough, applause, a shouted
    # word): it is no speaker of its own, so the tree is cut finer until `wanted` real ones come out.
    for extra in range(0, 6):
        labels = fcluster(tree, t=min(wanted + extra, chosen.size), criterion="maxclust")
        kept = _real(labels, options)
        if len(kept) >= wanted:
            break
    sizes = {k: int((labels == k).sum()) for k in np.unique(labels)}
    kept = sorted(kept if len(kept) >= wanted else sizes, key=lambda k: -sizes[k])[:wanted]
    centroids = np.stack([_unit(embeddings[chosen][labels == k].mean(axis=0)) for k in kept])
    return np.argmax(embeddings @ centroids.T, axis=1)


def _real(labels: np.ndarray, options: TurnOptions) -> list[int]:
    """The clusters heard in at least min_speaker_windows windows."""
    values, counts = np.unique(labels, return_counts=True)
    return [int(v) for v, c in zip(values, counts, strict=True) if c >= options.min_speaker_windows]


def turns(spans: list[tuple[int, int]], embeddings: np.ndarray, labels: np.ndarray, options: TurnOptions) -> list[Turn]:
    """Who spoke when, numbered in order of first appearance, from labelled windows."""
    if not spans:
        return []
    step = int(STEP_SECONDS * SAMPLE_RATE)
    present = np.unique(labels)
    speakers = present.size
    centroids = np.stack([_unit(embeddings[labels == k].mean(axis=0)) for k in present])
    similarity = embeddings @ centroids.T  # windows x speakers
    n_steps = -(-max(end for _, end in spans) // step)
    votes = np.zeros((n_steps, speakers))
    covered = np.zeros(n_steps, dtype=bool)
    for (start, end), row in zip(spans, similarity, strict=True):
        votes[start // step : -(-end // step)] += row
        covered[start // step : -(-end // step)] = True
    steps = np.flatnonzero(covered)
    width = int(round(options.min_turn_seconds / STEP_SECONDS))
    # Smoothed within each stretch of speech, never across a pause (where turns most often change).
    runs = np.split(np.arange(steps.size), np.flatnonzero(np.diff(steps) > 1) + 1)
    best = np.argmax(votes[steps], axis=1)
    spoken = np.concatenate([_majority(best[run], speakers, width) for run in runs])
    order = _first_appearance(spoken)
    found: list[Turn] = []
    for index, label in zip(steps.tolist(), spoken.tolist(), strict=True):
        speaker = order[label]
        start, end = index * step, (index + 1) * step
        if found and found[-1].speaker == speaker and found[-1].end == start:
            found[-1] = Turn(found[-1].start, end, speaker)
        else:
            found.append(Turn(start, end, speaker))
    return found


def speaker_of(turns_: list[Turn], start: float, end: float) -> int | None:
    """The speaker whose turns overlap [start, end) seconds the most (the nearest turn's when none does)."""
    if not turns_:
        return None
    lo, hi = start * SAMPLE_RATE, max(end, start) * SAMPLE_RATE
    overlaps = [max(0.0, min(hi, t.end) - max(lo, t.start)) for t in turns_]
    best = int(np.argmax(overlaps))
    if overlaps[best] > 0:
        return turns_[best].speaker
    middle = (lo + hi) / 2
    return min(turns_, key=lambda t: min(abs(t.start - middle), abs(t.end - middle))).speaker


def anchored(labels: np.ndarray, embeddings: np.ndarray, references: np.ndarray, options: TurnOptions) -> np.ndarray:
    """Cluster labels with the windows that clearly sound like a known speaker (their clip the closest,
    at least known_window_similarity) given a label of that speaker's own, when min_speaker_windows do."""
    if references.size == 0 or labels.size == 0:
        return labels
    similarity = embeddings @ references.T
    best = np.argmax(similarity, axis=1)
    clear = similarity[np.arange(labels.size), best] >= options.known_window_similarity
    relabelled = labels.copy()
    for k in range(references.shape[0]):
        theirs = clear & (best == k)
        if theirs.sum() >= options.min_speaker_windows:
            relabelled[theirs] = labels.max() + 1 + k
    return relabelled


def voices_of(found: list[Turn], spans: list[tuple[int, int]], embeddings: np.ndarray) -> dict[int, np.ndarray]:
    """Each speaker's voice: the unit mean of the windows their turns cover most."""
    owners = [speaker_of(found, start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in spans]
    return {
        speaker: _unit(embeddings[[k for k, owner in enumerate(owners) if owner == speaker]].mean(axis=0))
        for speaker in sorted({o for o in owners if o is not None})
    }


def named(voices: dict[int, np.ndarray], references: np.ndarray, least: float) -> dict[int, int]:
    """speaker -> known speaker (a row of `references`): one each, the pairing of the highest total
    cosine similarity (Hungarian), a pair kept only when its similarity is at least `least`."""
    if not voices or references.size == 0:
        return {}
    speakers = list(voices)
    similarity = np.stack([voices[s] for s in speakers]) @ references.T
    rows, columns = linear_sum_assignment(similarity, maximize=True)
    return {speakers[r]: int(c) for r, c in zip(rows, columns, strict=True) if similarity[r, c] >= least}


def _majority(labels: np.ndarray, speakers: int, width: int) -> np.ndarray:
    """Each label replaced by the most frequent one within `width` steps around it (short flips go)."""
    if speakers < 2 or width < 2:
        return labels
    counts = uniform_filter1d(np.eye(speakers)[labels], size=width | 1, axis=0, mode="nearest")
    return np.argmax(counts, axis=1)


def _first_appearance(sequence: np.ndarray) -> dict[int, int]:
    order: dict[int, int] = {}
    for value in sequence.tolist():
        order.setdefault(value, len(order))
    return order


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)
