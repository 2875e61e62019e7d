"""ctypes binding to the libwhisper 1.8.5 shipped inside the pywhispercpp 1.5.1 wheel.

Why this exists: pywhispercpp only exposes the "one context = one state" API, so every
concurrent transcription would need its own copy of the model weights.  libwhisper itself
can share one ``whisper_context`` (the weights, read-only after loading) between several
``whisper_state`` objects (mel, KV caches, compute buffers, results), each used by at most
one thread at a time.  This module exposes exactly that, and nothing more.

Typical use::

    lib = open_library()                      # find + load + check_abi + log forwarding
    with NativeContext(lib, model_path) as ctx, ctx.new_state() as state:
        result = full.transcribe(ctx, state, audio, n_threads=2, language=None,
                                 translate=False, beam_size=1)

Thread-safety contract:
* one ``NativeContext`` may be used from any number of threads at once;
* one ``NativeState`` serves one call at a time (a second concurrent call on the same
  state raises ``RuntimeError`` instead of corrupting memory);
* ``NativeContext.close()`` closes its remaining states first (waiting for running calls).

The struct layouts live in ``worker.engine.libwhisper.structs``; ``check_abi`` verifies them against the
loaded library at start-up (``open_library`` does it); never skip it, a silent layout mismatch
means memory corruption, not an exception.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from loguru import logger

from worker.engine.libwhisper.structs import (
    WhisperContextParams,
)


class NativeCallError(RuntimeError):
    """A libwhisper call failed (NULL handle or non-zero return code)."""

    def __init__(self, function: str, code: int | None, detail: str = "") -> None:
        self.function = function
        self.code = code
        what = "returned NULL" if code is None else f"returned {code}"
        super().__init__(f"{function} {what}{': ' + detail if detail else ''}")


# --------------------------------------------------------------------------------------
# Context and state
# --------------------------------------------------------------------------------------


class NativeState:
    """Owns one ``whisper_state*`` (mel, KV caches, compute buffers, last results).

    Created by ``NativeContext.new_state``.  Serves one call at a time; ``close()`` waits for
    a running call to finish, then frees the state.  Usable as a context manager.

    Reuse caveat: whisper.cpp seeds the RNG of decoder 0 once, in ``whisper_init_state``, and
    that decoder samples whenever the temperature fallback kicks in (t > 0), and in beam search
    at any temperature (``whisper_sample_token_topk`` draws each beam's candidates from it).
    Results of such calls therefore depend on what the state decoded before; a fresh state
    (about 6 ms to create; its buffers are re-touched on first use) reproduces a first call exactly.
    """

    def __init__(self, context: NativeContext, handle: int) -> None:
        self._context = context
        self._handle: int | None = handle
        self._lock = threading.Lock()

    @property
    def context(self) -> NativeContext:
        """The context this state was created from (and may only be used with)."""
        return self._context

    def acquire(self) -> int:
        """Take exclusive use of the state and return its handle; pair with ``release``.

        Raises ``RuntimeError`` if the state is closed or already in use by another call.
        """
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("whisper state is already in use by another call")
        if self._handle is None:
            self._lock.release()
            raise RuntimeError("whisper state is closed")
        return self._handle

    def release(self) -> None:
        """End the exclusive use begun by ``acquire``."""
        self._lock.release()

    def close(self) -> None:
        """Free the native state (idempotent); blocks while a call is using it."""
        with self._lock:
            if self._handle is not None:
                self._context.lib.whisper_free_state(self._handle)
                self._handle = None
        self._context._forget(self)

    def __enter__(self) -> NativeState:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class NativeContext:
    """Owns one ``whisper_context*`` loaded without a default state (weights only).

    Thread-safe: states may be created and used concurrently from several threads.
    Usable as a context manager; ``close()`` frees remaining states, then the weights.
    """

    def __init__(
        self, lib: ctypes.CDLL, model_path: Path, *, flash_attn: bool = False, alignment_heads: int | None = None
    ) -> None:
        """Load ``model_path`` on the CPU.  Raises ``FileNotFoundError`` if the file does not
        exist and ``NativeCallError`` if libwhisper rejects it (details go to the log).

        ``alignment_heads``: a ``whisper_alignment_heads_preset`` (``ALIGNMENT_HEADS_PRESETS``) turns on
        DTW token timing (``NativeToken.t_dtw``); whisper.cpp 1.8.5 cannot do it with flash attention.
        """
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"whisper model not found: {model_path}")
        self.lib = lib
        self.model_path = model_path
        self._lock = threading.Lock()
        self._states: set[NativeState] = set()
        self._closing = False
        if alignment_heads is not None and flash_attn:
            raise ValueError("DTW token timing needs flash_attn=False (whisper.cpp 1.8.5 would silently drop it)")
        self._handle: int | None = self._init_context(model_path, flash_attn, alignment_heads)
        self._multilingual = bool(lib.whisper_is_multilingual(self._handle))
        self.eot = int(lib.whisper_token_eot(self._handle))  # ids from here up are special tokens

    def _init_context(self, model_path: Path, flash_attn: bool, alignment_heads: int | None) -> int:
        """Call ``whisper_init_from_file_with_params_no_state`` with CPU-only params."""
        params = _context_params(self.lib)
        params.use_gpu = False  # the wheel is a CPU build; never probe GPU backends
        params.flash_attn = flash_attn
        if alignment_heads is not None:
            params.dtw_token_timestamps = True
            params.dtw_aheads_preset = alignment_heads
        handle = self.lib.whisper_init_from_file_with_params_no_state(str(model_path).encode(), params)
        if not handle:
            raise NativeCallError(
                "whisper_init_from_file_with_params_no_state", None, f"could not load model {model_path}"
            )
        logger.debug("loaded whisper model {} (flash_attn={})", model_path, flash_attn)
        return handle

    @property
    def handle(self) -> int:
        """The raw ``whisper_context*``; raises ``RuntimeError`` once closed."""
        if self._handle is None:
            raise RuntimeError("whisper context is closed")
        return self._handle

    def is_multilingual(self) -> bool:
        """True for multilingual models, False for English-only (``*.en``) ones."""
        return self._multilingual

    def new_state(self) -> NativeState:
        """Allocate a fresh ``whisper_state`` for this context (caller closes it)."""
        with self._lock:
            if self._closing:
                raise RuntimeError("whisper context is closing")
            handle = self.lib.whisper_init_state(self.handle)
            if not handle:
                raise NativeCallError("whisper_init_state", None, "out of memory?")
            state = NativeState(self, handle)
            self._states.add(state)
        return state

    def _forget(self, state: NativeState) -> None:
        """Drop a closed state from the bookkeeping."""
        with self._lock:
            self._states.discard(state)

    def close(self) -> None:
        """Close remaining states (waiting for running calls), then free the weights. Idempotent."""
        with self._lock:
            self._closing = True  # no new states from here on
            states = list(self._states)
        for state in states:
            state.close()
        with self._lock:
            if self._handle is not None:
                self.lib.whisper_free(self._handle)
                self._handle = None

    def __enter__(self) -> NativeContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _context_params(lib: ctypes.CDLL) -> WhisperContextParams:
    """A private copy of the library's default context params."""
    pointer = lib.whisper_context_default_params_by_ref()
    try:
        return WhisperContextParams.from_buffer_copy(pointer.contents)
    finally:
        lib.whisper_free_context_params(pointer)


def tokenize(ctx: NativeContext, text: str) -> list[int]:
    """`text` as the model's tokens (whisper.cpp's tokenizer)."""
    encoded = text.encode("utf-8")
    room = len(encoded) + 1  # never more tokens than bytes
    tokens = (ctypes.c_int32 * room)()
    count = ctx.lib.whisper_tokenize(ctx.handle, encoded, tokens, room)
    if count < 0:
        raise NativeCallError("whisper_tokenize", count)
    return list(tokens[:count])
