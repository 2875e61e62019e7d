"""Split 16 kHz mono samples into chunks that start and end in silence (pure: arrays in, Chunks out).

Why silence-aligned chunks of at most ~30 s:
- whisper's encoder always sees a 30 s window; a chunk that overruns 30 s costs a second full
  encoder pass, and a chunk cut inside a word loses or garbles that word on both sides.
- independent chunks can be transcribed concurrently on one shared model.
- long silences are where whisper hallucinates; they are left out entirely.

How: frame energies (20 ms RMS, in dB) against a threshold that adapts to the recording
mark voiced frames. Voiced runs separated by less than `merge_gap_seconds` form
one speech span (padded a little); spans are packed into chunks up to `max_seconds`, and a
span too long for one chunk is cut at the longest pause inside the last `search_seconds`
of the allowed window (or, if there is no pause at all, at the quietest frame there).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
FRAME = 320  # 20 ms


@dataclass(frozen=True)
class ChunkingOptions:
    """Tuning of the silence search; the defaults suit speech."""

    max_seconds: float = 29.0
    search_seconds: float = 8.0
    min_pause_seconds: float = 0.1
    merge_gap_seconds: float = 1.0
    # Silences longer than this are never inside a chunk: whisper hallucinates in long silence.
    # Shorter ones are, since every chunk costs a full 30 s encoder pass however short it is.
    max_inner_silence_seconds: float = 3.0
    pad_seconds: float = 0.2
    floor_db: float = -55.0  # frames at or below this level are always silent
    margin_db: float = 12.0  # voiced: this far above the noise floor...
    headroom_db: float = 25.0  # ...or this far below the loud parts, whichever is lower


# How far past a seam between two pieces of a chunk a segment's end may fall and still be the earlier
# piece's (whisper's segment times are that loose; a real segment across the seam reaches far past it).
SEAM_SLACK_SECONDS = 0.6


@dataclass(frozen=True)
class Chunk:
    """Samples [start, end) of the job's audio; `start` is the true offset used for timestamps.

    A chunk made of speech regions (worker.media.speech) has `pieces`: its audio is those absolute
    sample ranges one after another (the non-speech between them left out), and `absolute` maps a
    time in that audio back onto the recording. A chunk of the energy splitter is one piece.
    """

    index: int
    start: int
    end: int
    pieces: tuple[tuple[int, int], ...] = ()
    # The channel the chunk's audio comes from (diarize "channels": one speaker per channel), else 0.
    source: int = 0

    @classmethod
    def of_pieces(cls, index: int, pieces: Sequence[tuple[int, int]], *, source: int = 0) -> "Chunk":
        """A chunk of these ascending, disjoint sample ranges (contiguous ones joined)."""
        joined: list[tuple[int, int]] = []
        for start, end in pieces:
            if joined and start <= joined[-1][1]:
                joined[-1] = (joined[-1][0], max(end, joined[-1][1]))
            else:
                joined.append((start, end))
        if len(joined) == 1:
            return cls(index, *joined[0], source=source)
        return cls(index, joined[0][0], joined[-1][1], tuple(joined), source=source)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """The absolute sample ranges the chunk's audio is made of."""
        return self.pieces or ((self.start, self.end),)

    @property
    def name(self) -> str:
        return f"chunk_{self.index:04d}.wav"

    @property
    def start_seconds(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def n_samples(self) -> int:
        return sum(end - start for start, end in self.spans)

    @property
    def seconds(self) -> float:
        """Length of the chunk's audio (what whisper hears)."""
        return self.n_samples / SAMPLE_RATE

    def absolute(self, seconds: float, *, ending: bool = False) -> float:
        """A time in the chunk's audio as a time in the recording, held inside the chunk.

        At the seam of two pieces the time is ambiguous: a start (`ending=False`) goes to the later
        piece's start, an end to the earlier piece's end.
        """
        number, offset = self._locate(seconds, ending=ending)
        return (self.spans[number][0] + offset) / SAMPLE_RATE

    def place(self, start: float, end: float, *, whole: bool = False) -> tuple[float, float]:
        """A span of the chunk's audio in the recording. `whole` (a word): kept inside one piece, the one
        holding most of it, since a word cannot straddle the non-speech cut out between two pieces; else
        (a segment, possibly several sentences) each end placed on its own."""
        if not whole:
            start, end = self._off_seams(start, end)
            return self.absolute(start), max(self.absolute(start), self.absolute(end, ending=True))
        first, _ = self._locate(start)
        last, _ = self._locate(end, ending=True)
        if first == last:
            return self.absolute(start), max(self.absolute(start), self.absolute(end, ending=True))
        seam = sum(e - s for s, e in self.spans[: first + 1]) / SAMPLE_RATE  # where piece `first` ends
        if seam - start >= end - seam:
            return self.absolute(start), self.spans[first][1] / SAMPLE_RATE
        return self.spans[last][0] / SAMPLE_RATE, self.absolute(end, ending=True)

    def _off_seams(self, start: float, end: float) -> tuple[float, float]:
        """whisper's segment ends are a few tenths of a second loose: an end just past a seam, or a start
        just before one, is put at the seam, so a segment is not stretched over the non-speech cut out
        there (the words, when there are any, place it exactly: worker.pipeline)."""
        seams = np.cumsum([e - s for s, e in self.spans])[:-1] / SAMPLE_RATE
        for seam in seams.tolist():
            if 0 < end - seam <= SEAM_SLACK_SECONDS and start < seam:
                end = seam
            if 0 < seam - start <= SEAM_SLACK_SECONDS and end > seam:
                start = seam
        return start, end

    def _locate(self, seconds: float, *, ending: bool = False) -> tuple[int, int]:
        """(piece number, samples into it) of a time in the chunk's audio, held inside the chunk."""
        position = round(min(max(seconds, 0.0), self.seconds) * SAMPLE_RATE)
        for number, (start, end) in enumerate(self.spans):
            length = end - start
            if position < length or (ending and position == length) or number == len(self.spans) - 1:
                return number, min(position, length)
            position -= length
        raise AssertionError("unreachable: the last piece returns")


def frame_db(samples: np.ndarray) -> np.ndarray:
    """RMS level of each whole 20 ms frame, in dB relative to full scale."""
    n = samples.size // FRAME
    frames = samples[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


# Samples per block when levels are computed piecewise: one minute, a whole number of frames.
LEVEL_BLOCK = FRAME * 50 * 60


def block_levels(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """frame_db of a recording read in blocks of a whole number of frames (equal to frame_db of it all).

    A recording's levels are 50 floats per second (24 kB per audio minute): the silence search needs
    the whole recording's (its threshold adapts to all of it), never its samples at once.
    """
    return np.concatenate([np.zeros(0), *(frame_db(block) for block in blocks)])


def voiced_frames(levels: np.ndarray, options: ChunkingOptions) -> np.ndarray:
    """True for frames clearly above the recording's noise floor.

    The threshold adapts to the recording: a margin above its quiet frames (5th percentile),
    but never closer than `headroom_db` to its loud frames (95th percentile), so that dense
    speech with few pauses is not mistaken for noise, and never below `floor_db`.
    """
    if levels.size == 0:
        return np.zeros(0, dtype=bool)
    noise_floor, loud = np.percentile(levels, [5, 95])
    threshold = max(options.floor_db, min(noise_floor + options.margin_db, loud - options.headroom_db))
    return levels > threshold


def voiced_seconds_after(voiced: np.ndarray, seconds: float) -> float:
    """How many seconds of a `voiced_frames` mask lie after `seconds`."""
    return float(voiced[_frames(max(seconds, 0.0)) :].sum()) * FRAME / SAMPLE_RATE


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in a boolean array."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def speech_spans(voiced: np.ndarray, options: ChunkingOptions) -> list[tuple[int, int]]:
    """Frame spans of speech: voiced runs joined across short gaps, padded, clipped."""
    merge, pad = _frames(options.merge_gap_seconds), _frames(options.pad_seconds)
    spans: list[tuple[int, int]] = []
    for start, end in _runs(voiced):
        if spans and start - spans[-1][1] < merge:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return [(max(0, s - pad), min(voiced.size, e + pad)) for s, e in spans]


def _frames(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE / FRAME))


def _cut_frame(levels: np.ndarray, voiced: np.ndarray, lo: int, hi: int, options: ChunkingOptions) -> int:
    """Where to cut within frames [lo, hi): the middle of the longest pause, else the quietest frame."""
    pauses = [(e - s, s, e) for s, e in _runs(~voiced[lo:hi]) if e - s >= _frames(options.min_pause_seconds)]
    if pauses:
        _, s, e = max(pauses)  # longest; among equals, the latest
        return lo + (s + e) // 2
    return lo + int(np.argmin(levels[lo:hi]))


def _split_span(
    start: int, end: int, levels: np.ndarray, voiced: np.ndarray, options: ChunkingOptions
) -> list[tuple[int, int]]:
    """Cut one long speech span into pieces of at most max_seconds, at pauses."""
    limit, search = _frames(options.max_seconds), _frames(options.search_seconds)
    pieces = []
    while end - start > limit:
        cut = _cut_frame(levels, voiced, start + limit - search, start + limit, options)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def _pack(spans: list[tuple[int, int]], options: ChunkingOptions) -> list[tuple[int, int]]:
    """Join consecutive spans into chunks while the chunk stays within max_seconds."""
    limit, max_gap = _frames(options.max_seconds), _frames(options.max_inner_silence_seconds)
    packed: list[tuple[int, int]] = []
    for start, end in spans:
        if packed and end - packed[-1][0] <= limit and start - packed[-1][1] <= max_gap:
            packed[-1] = (packed[-1][0], end)
        else:
            packed.append((start, end))
    return packed


def split(samples: np.ndarray, options: ChunkingOptions = ChunkingOptions()) -> list[Chunk]:
    """Chunks covering the speech in `samples`, in order; [] when there is no speech at all."""
    return split_levels(frame_db(samples), samples.size, options)


def split_levels(levels: np.ndarray, n_samples: int, options: ChunkingOptions = ChunkingOptions()) -> list[Chunk]:
    """Chunks of a recording of `n_samples` samples, from its frame levels alone."""
    voiced = voiced_frames(levels, options)
    pieces = [
        piece
        for start, end in speech_spans(voiced, options)
        for piece in _split_span(start, end, levels, voiced, options)
    ]
    chunks = []
    for index, (start, end) in enumerate(_pack(pieces, options)):
        # The last frame boundary may fall short of the real end: keep the tail samples.
        end_sample = n_samples if end == levels.size else end * FRAME
        chunks.append(Chunk(index=index, start=start * FRAME, end=end_sample))
    return chunks
