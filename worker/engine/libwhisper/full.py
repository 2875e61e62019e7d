"""whisper_full on one state: a transcription or a language detection, its results read back.

The old path of the engine (and the batched engine's fallback): one call decodes one chunk on its own
state, with whisper.cpp's own seek loop, sampling and timestamp rules.
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.engine.libwhisper.context import NativeCallError, NativeContext, NativeState, tokenize
from worker.engine.libwhisper.loader import FloatPtr
from worker.engine.libwhisper.structs import (
    MAX_BEAM_SIZE,
    WHISPER_SAMPLING_BEAM_SEARCH,
    WHISPER_SAMPLING_GREEDY,
    WhisperFullParams,
)


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
    """Defaults for the chosen strategy plus our overrides; temperature fallback untouched.

    Temperature fallback keeps the library defaults (for beam search these include
    ``greedy.best_of = -1``: one sampled decoder per fallback step; see also the reuse
    caveat on ``NativeState``), unless ``temperature_fallback`` is off.
    """
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
    ``None``/``"en"`` (see ``_resolve_language``). Temperature fallback: see ``_build_params``.
    The GIL is released during decoding, so calls on *different* states run in parallel.
    Raises ``RuntimeError`` if ``state`` is busy or closed, ``NativeCallError`` (with
    ``.code``) if whisper returns non-zero.
    """
    samples = _checked_input(ctx, state, audio, n_threads=n_threads, beam_size=beam_size)
    params = _build_params(
        ctx.lib,
        n_threads=n_threads,
        language=_resolve_language(ctx, language),  # ctypes keeps a reference in params._objects
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
    # Conditioning on the prompt stops at temperature 0.5 (WHISPER_HISTORY_CONDITIONING_TEMP_CUTOFF).
    conditioning = prompt if prompt and temperature < 0.5 else None
    return _run_full(ctx, state, params, samples, n_threads, no_speech_prob, conditioning)


def _checked_input(
    ctx: NativeContext, state: NativeState, audio: np.ndarray, *, n_threads: int, beam_size: int
) -> np.ndarray:
    """``audio`` as ``transcribe`` passes it to whisper, once every argument checked (``ValueError``)."""
    samples = _validate_audio(audio)
    _check_threads(n_threads)
    if not 1 <= beam_size <= MAX_BEAM_SIZE:
        raise ValueError(f"beam_size must be in 1..{MAX_BEAM_SIZE}, got {beam_size}")
    _check_pair(ctx, state)
    return samples


def _run_full(
    ctx: NativeContext,
    state: NativeState,
    params: WhisperFullParams,
    samples: np.ndarray,
    n_threads: int,
    no_speech_prob: bool,
    conditioning: str | None,
) -> NativeResult:
    """``whisper_full_with_state`` on the state, held for the call, and what it decoded read back
    (with P(no speech) when asked, against the prompt the decoder was conditioned on)."""
    handle = state.acquire()
    try:
        code = ctx.lib.whisper_full_with_state(ctx.handle, handle, params, _float_ptr(samples), samples.size)
        if code != 0:
            raise NativeCallError("whisper_full_with_state", code)
        segments = _read_segments(ctx, handle)
        language = _read_language(ctx.lib, handle)
        if no_speech_prob:
            no_speech = _no_speech_prob(ctx, handle, conditioning, n_threads)
            segments = tuple(dataclasses.replace(s, no_speech_prob=no_speech) for s in segments)
        return NativeResult(segments=segments, language=language)
    finally:
        state.release()


def detect_language(ctx: NativeContext, state: NativeState, audio: np.ndarray, *, n_threads: int) -> dict[str, float]:
    """Detect the spoken language from the first 30 s of ``audio``.

    Returns each language's probability, by code.  Multilingual models only (``ValueError``
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
    return {lib.whisper_lang_str(i).decode("ascii"): float(probs[i]) for i in range(len(probs))}
