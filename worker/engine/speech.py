"""The process's one Silero speech detector: speech probabilities of a recording read in blocks.

One VAD context per process, shared by every job: its weights are under 1 MB and a recording's
probabilities take about 11 s of one CPU per audio hour here (docs/performance.md), so jobs take turns
on it (a lock) rather than each loading a copy. One thread per call: measured, a second thread made it
slower (the model is a small LSTM, per 32 ms window).
"""

import threading
from collections.abc import Iterable
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


class SpeechDetector:
    """Thread-safe: one recording at a time, callers wait their turn."""

    def __init__(self, model_path: Path) -> None:
        self.model_path = Path(model_path)
        try:
            lib = open_library()
        except (NativeABIError, OSError) as exc:
            raise SpeechDetectorUnavailable(str(exc)) from exc
        self._vad = NativeVad(lib, self.model_path, n_threads=1)
        self._lock = threading.Lock()
        logger.info("Speech detector ready: {}", self.model_path.name)

    def probabilities(self, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """Speech probability of every 512-sample window of the recording the blocks make up, in order.

        Every block but the last must be a whole number of windows (the model's state carries over
        from one block to the next; a partial window would be zero-padded in the middle of speech).
        """
        parts = []
        ragged = False  # the previous block ended inside a window
        with self._lock:
            self._vad.reset()
            for block in blocks:
                if ragged:
                    raise ValueError("only the last block may end inside a 512-sample window")
                try:
                    parts.append(self._vad.probabilities(block))
                except RuntimeError as exc:
                    raise TranscriptionError(f"speech detection failed: {exc}") from exc
                ragged = block.size % WINDOW != 0
        return np.concatenate([np.zeros(0, dtype=np.float32), *parts])

    def close(self) -> None:
        with self._lock:
            self._vad.close()
