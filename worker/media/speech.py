"""Chunks from speech: Silero's per-window speech probabilities in, Chunks of speech only out (pure numpy).

Why: whisper writes words where there is no speech (noise, tones, music, long silence) and the energy
splitter (worker.media.chunking) keeps whatever is loud. Here a chunk is made of speech regions only:
the non-speech between two regions is cut out down to the padding kept around each region, and the
regions are packed one after another into chunks of at most `max_seconds` of audio. A chunk then
carries its pieces (absolute sample ranges) so that times in its audio map back onto the recording.

Regions, as Silero's own `get_speech_timestamps` defines them (thresholds with hysteresis, short
silences bridged, short bursts dropped), written here against the probabilities whisper.cpp's VAD
returns (worker.engine.speech), 31.25 per second: a 4 h recording's are 1.8 MB.
"""

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

from worker.media.audio import Audio
from worker.media.chunking import SAMPLE_RATE, Chunk

WINDOW = 512  # samples per probability (32 ms)


@dataclass(frozen=True)
class VadOptions:
    """Speech-region tuning (Settings VAD_*; a job's `vad` options and the gateway's server_vad override
    threshold, padding and min silence). Defaults measured in cmd/bench --vad (docs/performance.md)."""

    threshold: float = 0.5
    min_speech_ms: int = 250
    # A silence shorter than this inside speech does not end the region.
    min_silence_ms: int = 500
    # Kept on each side of a region (so words' onsets and tails are not cut).
    speech_pad_ms: int = 300
    # Where a region longer than a chunk is cut: the least speech-like window in this last stretch.
    search_seconds: float = 8.0
    # Quiet stretches raised for the detector and whisper (`detection_gains`).
    level_quiet: bool = True

    @property
    def off_threshold(self) -> float:
        """Below this, speech is over (Silero's hysteresis: 0.15 under the onset threshold)."""
        return max(self.threshold - 0.15, 0.01)


def _windows(ms: float) -> int:
    return int(round(ms / 1000 * SAMPLE_RATE / WINDOW))


def speech_windows(probabilities: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """[start, end) window ranges of speech: onset at `threshold`, over once below `off_threshold` for
    `min_silence_ms`, regions shorter than `min_speech_ms` dropped."""
    min_silence, min_speech = max(1, _windows(options.min_silence_ms)), _windows(options.min_speech_ms)
    regions: list[tuple[int, int]] = []
    start: int | None = None
    quiet_since: int | None = None
    for index, p in enumerate(probabilities.tolist()):
        if start is None:
            if p >= options.threshold:
                start, quiet_since = index, None
            continue
        if p >= options.threshold:
            quiet_since = None
        elif p < options.off_threshold:
            quiet_since = index if quiet_since is None else quiet_since
            if index + 1 - quiet_since >= min_silence:
                regions.append((start, quiet_since))
                start = None
    if start is not None:
        regions.append((start, quiet_since if quiet_since is not None else probabilities.size))
    return [(s, e) for s, e in regions if e - s >= max(1, min_speech)]


def speech_regions(probabilities: np.ndarray, n_samples: int, options: VadOptions) -> list[tuple[int, int]]:
    """[start, end) sample ranges of speech, padded by `speech_pad_ms`, overlapping ones merged."""
    pad = int(options.speech_pad_ms * SAMPLE_RATE / 1000)
    regions: list[tuple[int, int]] = []
    for s, e in speech_windows(probabilities, options):
        start, end = max(0, s * WINDOW - pad), min(n_samples, e * WINDOW + pad)
        if regions and start <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(end, regions[-1][1]))
        elif end > start:
            regions.append((start, end))
    return regions


def _split_region(
    start: int, end: int, probabilities: np.ndarray, limit: int, options: VadOptions
) -> list[tuple[int, int]]:
    """A region longer than `limit` samples cut where speech is least likely in the last
    `search_seconds` before each limit."""
    search = int(options.search_seconds * SAMPLE_RATE)
    pieces = []
    while end - start > limit:
        lo, hi = (start + limit - search) // WINDOW + 1, (start + limit) // WINDOW
        window = probabilities[lo:hi]
        cut = (lo + int(np.argmin(window))) * WINDOW if window.size else start + limit
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def speech_chunks(
    probabilities: np.ndarray, n_samples: int, options: VadOptions, *, max_seconds: float, source: int = 0
) -> list[Chunk]:
    """Chunks of at most `max_seconds` of audio made of the recording's speech regions, in order;
    [] when there is no speech."""
    limit = int(max_seconds * SAMPLE_RATE)
    pieces = [
        piece
        for start, end in speech_regions(probabilities, n_samples, options)
        for piece in _split_region(start, end, probabilities, limit, options)
    ]
    packed: list[list[tuple[int, int]]] = []
    for piece in pieces:
        if packed and sum(e - s for s, e in packed[-1]) + piece[1] - piece[0] <= limit:
            packed[-1].append(piece)
        else:
            packed.append([piece])
    return [Chunk.of_pieces(index, spans, source=source) for index, spans in enumerate(packed)]


# --- one speaker per channel ---------------------------------------------------------------

# A channel's window counts as its speaker's only when it is within this much of the loudest channel
# there: another speaker's voice leaking in (bleed, ~20 dB down) is not transcribed twice, while two
# people talking at once on their own microphones both are.
DOMINANCE_DB = 10.0
# Channels whose levels differ by less than this (median over speech) carry the same sound.
SAME_CHANNELS_DB = 1.0


# Quiet speech is lost twice: Silero misses it (a speaker 28-34 dB under the other, at -54 to -66 dBFS in
# the mono mix, lost 12-100% of their turns' time to the detector), and whisper, hearing a loud and a quiet
# voice in one window, leaves the quiet one out (66 of 282 words at 28 dB under). So both hear the
# recording with quiet stretches raised toward LEVEL_TARGET_DBFS, by at most MAX_GAIN_DB, each window by
# the loudest level within LEVEL_SPAN_SECONDS of it (a pause keeps the gain of the speech around it);
# never lowered (docs/performance.md: 4 of 282 words lost then; no word more on non-speech).
LEVEL_TARGET_DBFS = -30.0
MAX_GAIN_DB = 24.0
LEVEL_SPAN_SECONDS = 1.0


def detection_gains(levels: np.ndarray) -> np.ndarray:
    """The gain of each 512-sample window (its `window_levels`) for the speech detector's input."""
    span = 2 * _windows(LEVEL_SPAN_SECONDS * 1000) + 1
    envelope = maximum_filter1d(levels, size=span, mode="nearest") if levels.size else levels
    gain_db = np.clip(LEVEL_TARGET_DBFS - envelope, 0.0, MAX_GAIN_DB)
    return (10 ** (gain_db / 20)).astype(np.float32)


def levelled(samples: np.ndarray, gains: np.ndarray, start: int = 0) -> np.ndarray:
    """`samples` (the recording's from sample `start` on) times the gains of the windows they fall in."""
    if samples.size == 0 or gains.size == 0:
        return samples
    windows = np.minimum(np.arange(start, start + samples.size) // WINDOW, gains.size - 1)
    return np.clip(samples * gains[windows], -1.0, 1.0).astype(np.float32)


class Levelled:
    """A recording (worker.media.audio.Audio) as the detector and whisper hear it: `levelled` by window gains."""

    def __init__(self, audio: Audio, gains: np.ndarray) -> None:
        self.audio = audio
        self.gains = gains
        self.n_samples = audio.n_samples

    def read(self, start: int, end: int) -> np.ndarray:
        return levelled(self.audio.read(start, end), self.gains, start)


def window_levels(samples: np.ndarray) -> np.ndarray:
    """RMS level of each 512-sample window (the last one zero-padded), in dBFS: aligned with the VAD's."""
    n = -(-samples.size // WINDOW)
    padded = np.zeros(n * WINDOW, dtype=np.float64)
    padded[: samples.size] = samples
    rms = np.sqrt(np.mean(padded.reshape(n, WINDOW) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def dominant(
    probabilities: list[np.ndarray], levels: list[np.ndarray], *, margin_db: float = DOMINANCE_DB
) -> list[np.ndarray]:
    """Each channel's speech probabilities with the windows where another channel is much louder zeroed."""
    loudest = np.max(np.stack(levels), axis=0)
    return [
        np.where(level >= loudest - margin_db, p, 0.0).astype(np.float32)
        for p, level in zip(probabilities, levels, strict=True)
    ]


def same_sound(levels: list[np.ndarray]) -> bool:
    """Whether the channels carry one sound (a mono recording stored as stereo): levels within
    SAME_CHANNELS_DB of each other over the louder half of the windows."""
    stack = np.stack(levels)
    loud = stack.max(axis=0) >= np.median(stack.max(axis=0))
    spread = stack[:, loud].max(axis=0) - stack[:, loud].min(axis=0)
    return bool(spread.size) and float(np.median(spread)) < SAME_CHANNELS_DB
