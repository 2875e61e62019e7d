"""whisper.cpp's Silero VAD through ctypes: one VAD context, fed audio in pieces, speech probabilities out.

whisper.cpp 1.8.5 runs Silero on windows of 512 samples (32 ms at 16 kHz) and keeps the model's LSTM
state between `whisper_vad_detect_speech_no_reset` calls, so a recording can be fed block by block
(memory flat in its length) and gives the probabilities one call on all of it would give, as long as
every block but the last is a whole number of windows. `whisper_vad_segments_from_*` are not used:
they see only the last call's probabilities, and speech regions are numpy work (worker.media.speech).

A VAD context is not thread-safe: the caller serialises calls (worker.engine.speech does).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from worker.engine.libwhisper.context import NativeCallError

SAMPLE_RATE = 16000
WINDOW = 512  # samples per probability (Silero's window at 16 kHz)


class NativeVad:
    """One whisper_vad_context: the Silero weights and the LSTM state of the recording being read."""

    def __init__(self, lib: ctypes.CDLL, model_path: Path, *, n_threads: int = 1) -> None:
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"VAD model not found: {model_path}")
        params = lib.whisper_vad_default_context_params()
        params.n_threads = n_threads
        params.use_gpu = False
        handle = lib.whisper_vad_init_from_file_with_params(str(model_path).encode(), params)
        if not handle:
            raise NativeCallError("whisper_vad_init_from_file_with_params", None, str(model_path))
        self._lib = lib
        self._handle: int | None = handle

    def reset(self) -> None:
        """Forget the previous recording: the next samples start a new one."""
        self._lib.whisper_vad_reset_state(self._require())

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample window of `samples` (the last one zero-padded),
        continuing the recording the previous calls read since `reset`."""
        if samples.size == 0:
            return np.zeros(0, dtype=np.float32)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        handle = self._require()
        pointer = samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if not self._lib.whisper_vad_detect_speech_no_reset(handle, pointer, samples.size):
            raise NativeCallError("whisper_vad_detect_speech_no_reset", None, f"{samples.size} samples")
        count = self._lib.whisper_vad_n_probs(handle)
        expected = -(-samples.size // WINDOW)
        if count != expected:
            raise NativeCallError("whisper_vad_n_probs", count, f"expected {expected} for {samples.size} samples")
        return np.ctypeslib.as_array(self._lib.whisper_vad_probs(handle), shape=(count,)).copy()

    def close(self) -> None:
        if self._handle is not None:
            self._lib.whisper_vad_free(self._handle)
            self._handle = None

    def _require(self) -> int:
        if self._handle is None:
            raise ValueError("the VAD context is closed")
        return self._handle

    def __enter__(self) -> NativeVad:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
