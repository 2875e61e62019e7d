"""The process's one Silero speech detector: speech probabilities of a recording read in blocks.

One detector per process, shared by every job, which take turns on it (a lock): its weights are under
1 MB and a recording's probabilities take about 9 s of one CPU per audio hour here (docs/performance.md).
The model is a small LSTM over 32 ms windows, one after another: a second thread on one context made it
slower. So a long recording is read in `parts` (one VAD context each, on their own threads): each part
but the first starts WARM_UP_WINDOWS early, with the model's state reset, and those probabilities are
dropped. The LSTM remembers for longer than that, so probabilities near a part's start differ from one
sequential pass (by up to 0.6 in a few dozen windows of 12,000); the parts depend only on the recording's
length, so a recording always gets the same ones. Two parts halve the time the transcription waits for it.
"""

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from loguru import logger

from worker.engine.libwhisper.loader import open_library
from worker.engine.libwhisper.structs import NativeABIError
from worker.engine.libwhisper.vad import SAMPLE_RATE, WINDOW, NativeVad
from worker.errors import TranscriptionError

# Probabilities per second of audio (31.25: one per 512-sample window).
PROBABILITIES_PER_SECOND = SAMPLE_RATE / WINDOW


class SpeechDetectorUnavailable(RuntimeError):
    """libwhisper cannot be driven through ctypes here (its ABI check failed, or it would not load)."""


# A part's warm-up (about 5 s), dropped; no part shorter than MIN_PART_SECONDS.
WARM_UP_WINDOWS = 160
MIN_PART_SECONDS = 60.0
BLOCK = WINDOW * 1875  # samples read at a time: a minute


class SpeechDetector:
    """Thread-safe: one recording at a time, callers wait their turn; up to `parts` VAD contexts per recording."""

    def __init__(self, model_path: Path, *, parts: int = 1) -> None:
        self.model_path = Path(model_path)
        try:
            lib = open_library()
        except (NativeABIError, OSError) as exc:
            raise SpeechDetectorUnavailable(str(exc)) from exc
        self._vads = [NativeVad(lib, self.model_path, n_threads=1) for _ in range(max(1, parts))]
        self._lock = threading.Lock()
        logger.info("Speech detector ready: {} ({} parts at once)", self.model_path.name, len(self._vads))

    def probabilities(self, read: Callable[[int, int], np.ndarray], n_samples: int) -> np.ndarray:
        """Speech probability of every 512-sample window of a recording of `n_samples`, in order, reading
        it with `read(start, end)` a block at a time."""
        bounds = self._parts(n_samples)
        with self._lock:
            if len(bounds) == 1:
                return self._part(self._vads[0], read, *bounds[0])
            with ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="vad") as pool:
                found = pool.map(lambda k: self._part(self._vads[k], read, *bounds[k]), range(len(bounds)))
                return np.concatenate(list(found))

    def _parts(self, n_samples: int) -> list[tuple[int, int]]:
        """[start, end) of each part, on window boundaries (the last one ends with the recording)."""
        windows = -(-n_samples // WINDOW)
        count = max(1, min(len(self._vads), int(n_samples / SAMPLE_RATE // MIN_PART_SECONDS)))
        edges = [round(k * windows / count) * WINDOW for k in range(count)] + [n_samples]
        return list(itertools.pairwise(edges))

    @staticmethod
    def _part(vad: NativeVad, read: Callable[[int, int], np.ndarray], start: int, end: int) -> np.ndarray:
        """The probabilities of [start, end), the model started WARM_UP_WINDOWS earlier (those dropped)."""
        early = min(start, WARM_UP_WINDOWS * WINDOW)
        vad.reset()
        found = []
        try:
            for at in range(start - early, end, BLOCK):
                found.append(vad.probabilities(read(at, min(at + BLOCK, end))))
        except RuntimeError as exc:
            raise TranscriptionError(f"speech detection failed: {exc}") from exc
        return np.concatenate([np.zeros(0, dtype=np.float32), *found])[early // WINDOW :]

    def close(self) -> None:
        with self._lock:
            for vad in self._vads:
                vad.close()
