"""ctypes binding to the libwhisper 1.8.5 shipped inside the pywhispercpp 1.5.1 wheel.

Why this exists: pywhispercpp only exposes the "one context = one state" API, so every
concurrent transcription would need its own copy of the model weights.  libwhisper itself
can share one ``whisper_context`` (the weights, read-only after loading) between several
``whisper_state`` objects (mel, KV caches, compute buffers, results), each used by at most
one thread at a time.  This module exposes exactly that, and nothing more.

Typical use::

    lib = open_library()                      # find + load + check_abi + log forwarding
    with NativeContext(lib, model_path) as ctx, ctx.new_state() as state:
        result = transcribe(ctx, state, audio, n_threads=2, language=None,
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
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from worker.engine.libwhisper.loader import FloatPtr, open_library
from worker.engine.libwhisper.structs import (
    MAX_BEAM_SIZE,
    WHISPER_SAMPLING_BEAM_SEARCH,
    WHISPER_SAMPLING_GREEDY,
    NativeABIError,
    WhisperContextParams,
    WhisperFullParams,
)

# The API transcriber.py uses; NativeABIError and open_library are re-exported from the
# modules that define them.
__all__ = [
    "NativeABIError",
    "NativeCallError",
    "NativeContext",
    "NativeResult",
    "NativeSegment",
    "NativeToken",
    "NativeState",
    "detect_language",
    "open_library",
    "transcribe",
]


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


def _full_params(lib: ctypes.CDLL, strategy: int) -> WhisperFullParams:
    """A private copy of the library's default full params for ``strategy``.

    Copied out of the heap block (then freed) so each call mutates only its own struct.
    """
    pointer = lib.whisper_full_default_params_by_ref(strategy)
    try:
        return WhisperFullParams.from_buffer_copy(pointer.contents)
    finally:
        lib.whisper_free_params(pointer)


# --------------------------------------------------------------------------------------
# Transcription
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NativeToken:
    """One decoded token of a segment. Times in 10 ms units from the start of the call's audio, -1
    when not computed (``t0``/``t1``: ``token_timestamps``; ``t_dtw``: DTW context, text tokens only).
    ``text`` is raw bytes: a multi-byte character may be split between tokens."""

    id: int
    text: bytes
    p: float
    plog: float
    t0: int
    t1: int
    t_dtw: int


@dataclass(frozen=True)
class NativeSegment:
    """One segment: times in seconds, the text exactly as whisper produced it (usually with a
    leading space; not stripped), and its tokens (special ones included)."""

    start: float
    end: float
    text: str
    tokens: tuple[NativeToken, ...] = ()
    # P(<|nospeech|>) at the start of the call's (one) 30 s window, as openai-whisper defines it;
    # None when not computed
    no_speech_prob: float | None = None


@dataclass(frozen=True)
class NativeResult:
    """Outcome of ``transcribe``. ``language``: the code whisper decoded with (the detected one for ``None``)."""

    segments: tuple[NativeSegment, ...]
    language: str


def _validate_audio(audio: np.ndarray) -> np.ndarray:
    """Return ``audio`` (``SAMPLE_RATE`` Hz mono) as C-contiguous float32 1-D, else ``ValueError``.

    No silent conversion of dtype or shape: a float64 or stereo array here is a bug upstream.
    Empty input is rejected because whisper would then reuse the previous mel of the state.
    """
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise ValueError(f"audio must be float32 (16 kHz mono PCM), got dtype {audio.dtype}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty")
    if audio.size > np.iinfo(np.int32).max:
        raise ValueError(f"audio too long for libwhisper: {audio.size} samples")
    return np.ascontiguousarray(audio)


def _check_pair(ctx: NativeContext, state: NativeState) -> None:
    """A state holds buffers sized for its own model; using it with another context is unsafe."""
    if state.context is not ctx:
        raise ValueError("state was created by a different NativeContext")


def _resolve_language(ctx: NativeContext, language: str | None) -> bytes:
    """Map the caller's language to the ``char*`` whisper expects, or raise ``ValueError``.

    ``None``/``"auto"`` means auto-detection on multilingual models.  English-only models
    cannot detect (their language tokens are untrained) and ignore the language when
    decoding, so for them ``None`` becomes ``"en"`` and any other language is an error.
    """
    if language in (None, "auto"):
        return b"auto" if ctx.is_multilingual() else b"en"
    encoded = language.encode("ascii", errors="replace")
    if ctx.lib.whisper_lang_id(encoded) < 0:
        raise ValueError(f"unknown whisper language: {language!r}")
    if not ctx.is_multilingual() and encoded != b"en":
        raise ValueError(f"English-only model cannot transcribe language {language!r}")
    return encoded


def _build_params(
    lib: ctypes.CDLL,
    *,
    n_threads: int,
    language: bytes,
    translate: bool,
    beam_size: int,
    no_context: bool,
    suppress_blank: bool,
    suppress_nst: bool,
    audio_ctx: int,
    temperature_fallback: bool,
    no_timestamps: bool,
    initial_prompt: bytes | None = None,
    temperature: float = 0.0,
    token_timestamps: bool = False,
) -> WhisperFullParams:
    """Defaults for the chosen strategy plus our overrides; temperature fallback untouched."""
    strategy = WHISPER_SAMPLING_GREEDY if beam_size == 1 else WHISPER_SAMPLING_BEAM_SEARCH
    params = _full_params(lib, strategy)
    params.n_threads = n_threads
    params.translate = translate
    params.no_context = no_context
    params.single_segment = False
    params.token_timestamps = token_timestamps  # per-token t0/t1 (whisper.cpp's timestamp-probability heuristic)
    params.print_special = False
    params.print_progress = False
    params.print_realtime = False  # would printf() to stdout from native code
    params.print_timestamps = False
    params.language = language  # ctypes also keeps a reference in params._objects
    params.detect_language = False  # True would stop after detection and return no text
    params.suppress_blank = suppress_blank
    params.suppress_nst = suppress_nst
    params.audio_ctx = audio_ctx  # encoder frames (20 ms each); 0 = the full 1500 (30 s)
    params.no_timestamps = no_timestamps  # no timestamp tokens: one segment per call
    # With no_context, whisper.cpp uses the initial prompt for the first 30 s window of each call:
    # every chunk (<= 30 s) gets it (docs/notes/whisper-1.8.5-token-data.md, section 2).
    params.initial_prompt = initial_prompt  # ctypes keeps a reference in params._objects
    params.temperature = temperature
    if not temperature_fallback:
        params.temperature_inc = 0.0  # one decode at temperature 0, never re-decoded hotter
    if strategy == WHISPER_SAMPLING_BEAM_SEARCH:
        params.beam_search.beam_size = beam_size
    return params


def _read_segments(ctx: NativeContext, state_handle: int) -> tuple[NativeSegment, ...]:
    """Copy all segments and their tokens out of the state; whisper times are in 10 ms units."""
    lib = ctx.lib
    segments = []
    for i in range(lib.whisper_full_n_segments_from_state(state_handle)):
        t0 = lib.whisper_full_get_segment_t0_from_state(state_handle, i)
        t1 = lib.whisper_full_get_segment_t1_from_state(state_handle, i)
        raw = lib.whisper_full_get_segment_text_from_state(state_handle, i) or b""
        tokens = tuple(
            _read_token(ctx, state_handle, i, j) for j in range(lib.whisper_full_n_tokens_from_state(state_handle, i))
        )
        text = raw.decode("utf-8", errors="replace")
        segments.append(NativeSegment(t0 / 100.0, t1 / 100.0, text, tokens))
    return tuple(segments)


def _read_token(ctx: NativeContext, state_handle: int, segment: int, index: int) -> NativeToken:
    data = ctx.lib.whisper_full_get_token_data_from_state(state_handle, segment, index)
    text = ctx.lib.whisper_full_get_token_text_from_state(ctx.handle, state_handle, segment, index) or b""
    return NativeToken(data.id, text, data.p, data.plog, data.t0, data.t1, data.t_dtw)


def _no_speech_prob(ctx: NativeContext, state_handle: int, prompt: str | None, n_threads: int) -> float:
    """P(<|nospeech|>) after the start-of-transcript token, as openai-whisper computes it.

    whisper.cpp 1.8.5 stores a value read from its decoder's first logits row, which it only
    fills when the prompt is that one token (English-only model, no prompt text): otherwise it
    is stale (docs/notes/whisper-1.8.5-token-data.md, section 5). So the start of the window is
    decoded again here, against the encoder output the call left in the state ([<|startofprev|>,
    the prompt's last tokens,] <|startoftranscript|>, as whisper.cpp prompted it), and the last
    row, the one whisper.cpp does keep, is read. One decoder pass over a few tokens.
    """
    lib = ctx.lib
    tokens = [lib.whisper_token_sot(ctx.handle)]
    if prompt:
        budget = lib.whisper_n_text_ctx(ctx.handle) // 2 - 1  # what whisper.cpp keeps of a prompt
        tokens = [lib.whisper_token_prev(ctx.handle), *tokenize(ctx, prompt)[-budget:], *tokens]
    array = (ctypes.c_int32 * len(tokens))(*tokens)
    code = lib.whisper_decode_with_state(ctx.handle, state_handle, array, len(tokens), 0, n_threads)
    if code != 0:
        raise NativeCallError("whisper_decode_with_state", code)
    n_vocab = lib.whisper_n_vocab(ctx.handle)
    logits = np.ctypeslib.as_array(lib.whisper_get_logits_from_state(state_handle), shape=(len(tokens) * n_vocab,))
    row = logits[(len(tokens) - 1) * n_vocab :].astype(np.float64)
    probabilities = np.exp(row - row.max())
    return round(float(probabilities[lib.whisper_token_nosp(ctx.handle)] / probabilities.sum()), 4)


def tokenize(ctx: NativeContext, text: str) -> list[int]:
    """`text` as the model's tokens (whisper.cpp's tokenizer)."""
    encoded = text.encode("utf-8")
    room = len(encoded) + 1  # never more tokens than bytes
    tokens = (ctypes.c_int32 * room)()
    count = ctx.lib.whisper_tokenize(ctx.handle, encoded, tokens, room)
    if count < 0:
        raise NativeCallError("whisper_tokenize", count)
    return list(tokens[:count])


def _read_language(lib: ctypes.CDLL, state_handle: int) -> str:
    """Language code the state last decoded with ("" if whisper reports an unknown id)."""
    raw = lib.whisper_lang_str(lib.whisper_full_lang_id_from_state(state_handle))
    return raw.decode("ascii") if raw else ""


def _check_threads(n_threads: int) -> None:
    """``n_threads`` must be a positive int."""
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")


def _float_ptr(samples: np.ndarray) -> Any:
    """``const float*`` into ``samples`` (caller keeps ``samples`` alive during the call)."""
    return samples.ctypes.data_as(FloatPtr)


def transcribe(
    ctx: NativeContext,
    state: NativeState,
    audio: np.ndarray,
    *,
    n_threads: int,
    language: str | None,
    translate: bool,
    beam_size: int,
    no_context: bool = True,
    suppress_blank: bool = True,
    suppress_nst: bool = True,
    audio_ctx: int = 0,
    temperature_fallback: bool = True,
    no_timestamps: bool = False,
    prompt: str | None = None,
    temperature: float = 0.0,
    token_timestamps: bool = False,
    no_speech_prob: bool = True,
) -> NativeResult:
    """Run ``whisper_full_with_state`` on ``audio`` using ``state`` and the weights of ``ctx``.

    ``audio``: float32, 1-D, 16 kHz mono samples (validated, ``ValueError`` otherwise).
    ``beam_size``: 1 = greedy decoding, 2..8 = beam search of that width.
    ``language``: ISO code, or ``None`` for auto-detection; English-only models take only
    ``None``/``"en"`` (see ``_resolve_language``).
    Temperature fallback keeps the library defaults (for beam search these include
    ``greedy.best_of = -1``: one sampled decoder per fallback step; see also the reuse
    caveat on ``NativeState``).
    The GIL is released during decoding, so calls on *different* states run in parallel.
    Raises ``RuntimeError`` if ``state`` is busy or closed, ``NativeCallError`` (with
    ``.code``) if whisper returns non-zero.
    """
    samples = _validate_audio(audio)
    _check_threads(n_threads)
    if not 1 <= beam_size <= MAX_BEAM_SIZE:
        raise ValueError(f"beam_size must be in 1..{MAX_BEAM_SIZE}, got {beam_size}")
    _check_pair(ctx, state)
    language_bytes = _resolve_language(ctx, language)  # stays referenced until we return
    params = _build_params(
        ctx.lib,
        n_threads=n_threads,
        language=language_bytes,
        translate=translate,
        beam_size=beam_size,
        no_context=no_context,
        suppress_blank=suppress_blank,
        suppress_nst=suppress_nst,
        audio_ctx=audio_ctx,
        temperature_fallback=temperature_fallback,
        no_timestamps=no_timestamps,
        initial_prompt=prompt.encode("utf-8") if prompt else None,
        temperature=temperature,
        token_timestamps=token_timestamps,
    )
    handle = state.acquire()
    try:
        code = ctx.lib.whisper_full_with_state(ctx.handle, handle, params, _float_ptr(samples), samples.size)
        if code != 0:
            raise NativeCallError("whisper_full_with_state", code)
        segments = _read_segments(ctx, handle)
        language = _read_language(ctx.lib, handle)
        # Conditioning on the prompt stops at temperature 0.5 (WHISPER_HISTORY_CONDITIONING_TEMP_CUTOFF).
        conditioning = prompt if prompt and temperature < 0.5 else None
        if no_speech_prob:
            no_speech = _no_speech_prob(ctx, handle, conditioning, n_threads)
            segments = tuple(dataclasses.replace(s, no_speech_prob=no_speech) for s in segments)
        return NativeResult(segments=segments, language=language)
    finally:
        state.release()


def detect_language(ctx: NativeContext, state: NativeState, audio: np.ndarray, *, n_threads: int) -> tuple[str, float]:
    """Detect the spoken language from the first 30 s of ``audio``.

    Returns ``(language code, probability)``.  Multilingual models only (``ValueError``
    otherwise); same audio validation and state exclusivity as ``transcribe``.  Overwrites
    the mel stored in ``state``.
    """
    samples = _validate_audio(audio)
    _check_threads(n_threads)
    _check_pair(ctx, state)
    if not ctx.is_multilingual():
        raise ValueError("language detection needs a multilingual model")
    lib = ctx.lib
    probs = (ctypes.c_float * (lib.whisper_lang_max_id() + 1))()
    handle = state.acquire()
    try:
        pcm = _float_ptr(samples)
        code = lib.whisper_pcm_to_mel_with_state(ctx.handle, handle, pcm, samples.size, n_threads)
        if code != 0:
            raise NativeCallError("whisper_pcm_to_mel_with_state", code)
        lang_id = lib.whisper_lang_auto_detect_with_state(ctx.handle, handle, 0, n_threads, probs)
        if lang_id < 0:
            raise NativeCallError("whisper_lang_auto_detect_with_state", lang_id)
    finally:
        state.release()
    return lib.whisper_lang_str(lang_id).decode("ascii"), float(probs[lang_id])
