"""ctypes binding to `whisper_group` (whisper/patches): encoder and decoder passes over several states at once.

A group belongs to one context and is driven by one thread (the batched engine's); the states it is
given are held by that thread for as long as their windows are decoded (`NativeState.acquire`).
`decode` returns a copy of each state's logits, so the caller may change them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from worker.engine.libwhisper.context import NativeCallError, NativeContext
from worker.engine.libwhisper.loader import FloatPtr, has_group


class NativeGroup:
    """A `whisper_group` of `context` for up to `max_states` states per pass."""

    def __init__(self, context: NativeContext, max_states: int) -> None:
        if not has_group(context.lib):
            raise NativeCallError("whisper_group_init", None, "this libwhisper has no whisper_group (unpatched build)")
        self.context = context
        self.max_states = max_states
        self.n_vocab = context.lib.whisper_n_vocab(context.handle)
        self.n_mels = context.lib.whisper_model_n_mels(context.handle)
        self.max_audio_ctx = context.lib.whisper_n_audio_ctx(context.handle)
        self._handle: int | None = context.lib.whisper_group_init(context.handle, max_states)
        if not self._handle:
            raise NativeCallError("whisper_group_init", None)

    def set_mel(self, state: int, mel: np.ndarray) -> None:
        """Give a state its log-mel spectrogram ([n_mels, n_frames] float32, worker.engine.mel)."""
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        lib = self.context.lib
        code = lib.whisper_set_mel_with_state(
            self.context.handle, state, mel.ctypes.data_as(FloatPtr), mel.shape[1], mel.shape[0]
        )
        if code != 0:
            raise NativeCallError("whisper_set_mel_with_state", code)

    def encode(self, states: Sequence[int], n_audio_ctx: Sequence[int], n_threads: int) -> None:
        """Encode each state's mel over its first `n_audio_ctx` positions (20 ms each)."""
        n = self._check(states)
        code = self.context.lib.whisper_group_encode(
            self.handle, (ctypes.c_void_p * n)(*states), (ctypes.c_int * n)(*n_audio_ctx), n, n_threads
        )
        if code != 0:
            raise NativeCallError("whisper_group_encode", code)

    def decode(
        self, states: Sequence[int], tokens: Sequence[Sequence[int]], n_past: Sequence[int], n_threads: int
    ) -> np.ndarray:
        """One decoder pass: state i takes `tokens[i]` after its first `n_past[i]`; the logits of each one's last
        token, [len(states), n_vocab] float32 (a copy)."""
        n = self._check(states)
        flat = [t for sequence in tokens for t in sequence]
        code = self.context.lib.whisper_group_decode(
            self.handle,
            (ctypes.c_void_p * n)(*states),
            (ctypes.c_int32 * len(flat))(*flat),
            (ctypes.c_int * n)(*(len(sequence) for sequence in tokens)),
            (ctypes.c_int * n)(*n_past),
            n,
            n_threads,
        )
        if code != 0:
            raise NativeCallError("whisper_group_decode", code)
        logits = np.empty((n, self.n_vocab), dtype=np.float32)
        for row, state in zip(logits, states, strict=True):
            row[:] = np.ctypeslib.as_array(self.context.lib.whisper_get_logits_from_state(state), shape=(self.n_vocab,))
        return logits

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise RuntimeError("whisper group is closed")
        return self._handle

    def _check(self, states: Sequence[int]) -> int:
        if not 1 <= len(states) <= self.max_states:
            raise ValueError(f"a group pass takes 1 to {self.max_states} states, got {len(states)}")
        return len(states)

    def close(self) -> None:
        if self._handle is not None:
            self.context.lib.whisper_group_free(self._handle)
            self._handle = None
