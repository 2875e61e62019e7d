"""whisper.cpp 1.8.5's public structs, declared for ctypes, and the start-up check that they match.

`whisper_full_params` is passed BY VALUE to whisper_full_with_state, so a layout that does not
match the loaded library is memory corruption, not an exception. `check_abi` compares the
library's version string, the struct sizes and a spread of default values (dense near the end
of each struct, where an inserted or removed member shows) before anything is called with them.
The layouts are transcribed from include/whisper.h for LP64 Linux (x86_64 / aarch64).
"""

from __future__ import annotations

import ctypes
from typing import Any

from loguru import logger

EXPECTED_VERSION = "1.8.5"
SAMPLE_RATE = 16_000

# enum whisper_sampling_strategy
WHISPER_SAMPLING_GREEDY = 0
WHISPER_SAMPLING_BEAM_SEARCH = 1

# WHISPER_MAX_DECODERS in src/whisper.cpp; whisper_full fails above this many beams.
MAX_BEAM_SIZE = 8

# Sizes computed by hand from whisper.h for LP64 (8-byte pointers/size_t, 4-byte int/float/
# enum, 1-byte bool) and confirmed against the shipped binary: the *_by_ref functions
# call `operator new(0x130)` and `operator new(0x30)` respectively.
#   whisper_full_params: 304 bytes (vad_params, 6 x 4 bytes, ends exactly at offset 304)
#   whisper_context_params: 48 bytes (dtw_mem_size ends at offset 48)
SIZEOF_FULL_PARAMS = 304
SIZEOF_CONTEXT_PARAMS = 48
SIZEOF_TOKEN_DATA = 56

# FLT_MAX: the 1.8.5 default of whisper_vad_params.max_speech_duration_s (i.e. "no limit").
_FLT_MAX = 3.4028234663852886e38


class NativeABIError(Exception):
    """The loaded libwhisper does not match the version/struct layout this module was written for."""


# --------------------------------------------------------------------------------------
# Struct layouts (whisper.h, 1.8.5)
# --------------------------------------------------------------------------------------


class WhisperAhead(ctypes.Structure):
    """``whisper_ahead``: one DTW alignment head."""

    _fields_ = [
        ("n_text_layer", ctypes.c_int),
        ("n_head", ctypes.c_int),
    ]


class WhisperAheads(ctypes.Structure):
    """``whisper_aheads``: a counted array of alignment heads."""

    _fields_ = [
        ("n_heads", ctypes.c_size_t),
        ("heads", ctypes.POINTER(WhisperAhead)),
    ]


class WhisperContextParams(ctypes.Structure):
    """``struct whisper_context_params`` (48 bytes on LP64)."""

    _fields_ = [
        ("use_gpu", ctypes.c_bool),
        ("flash_attn", ctypes.c_bool),
        ("gpu_device", ctypes.c_int),
        ("dtw_token_timestamps", ctypes.c_bool),
        ("dtw_aheads_preset", ctypes.c_int),  # enum whisper_alignment_heads_preset
        ("dtw_n_top", ctypes.c_int),
        ("dtw_aheads", WhisperAheads),
        ("dtw_mem_size", ctypes.c_size_t),
    ]


class WhisperGreedyParams(ctypes.Structure):
    """Anonymous ``greedy`` member of ``whisper_full_params``."""

    _fields_ = [("best_of", ctypes.c_int)]


class WhisperBeamSearchParams(ctypes.Structure):
    """Anonymous ``beam_search`` member of ``whisper_full_params``."""

    _fields_ = [
        ("beam_size", ctypes.c_int),
        ("patience", ctypes.c_float),
    ]


class WhisperVadParams(ctypes.Structure):
    """``whisper_vad_params`` (embedded by value at the end of ``whisper_full_params``)."""

    _fields_ = [
        ("threshold", ctypes.c_float),
        ("min_speech_duration_ms", ctypes.c_int),
        ("min_silence_duration_ms", ctypes.c_int),
        ("max_speech_duration_s", ctypes.c_float),
        ("speech_pad_ms", ctypes.c_int),
        ("samples_overlap", ctypes.c_float),
    ]


class WhisperVadContextParams(ctypes.Structure):
    """``whisper_vad_context_params`` (passed by value to ``whisper_vad_init_from_file_with_params``)."""

    _fields_ = [
        ("n_threads", ctypes.c_int),
        ("use_gpu", ctypes.c_bool),
        ("gpu_device", ctypes.c_int),
    ]


class WhisperTokenData(ctypes.Structure):
    """``whisper_token_data`` (56 bytes on LP64, returned by value): one decoded token.

    Times are in 10 ms units from the start of the call's audio, -1 when not computed: ``t0``/``t1``
    with ``token_timestamps``, ``t_dtw`` on a context made with DTW alignment heads (text tokens only).
    """

    _fields_ = [
        ("id", ctypes.c_int32),
        ("tid", ctypes.c_int32),
        ("p", ctypes.c_float),
        ("plog", ctypes.c_float),
        ("pt", ctypes.c_float),
        ("ptsum", ctypes.c_float),
        ("t0", ctypes.c_int64),
        ("t1", ctypes.c_int64),
        ("t_dtw", ctypes.c_int64),
        ("vlen", ctypes.c_float),
    ]


# enum whisper_alignment_heads_preset: the cross-attention heads that follow the audio best, per
# model (openai-whisper's _ALIGNMENT_HEADS, built into whisper.cpp). Quantization keeps the heads.
ALIGNMENT_HEADS_PRESETS = {
    "tiny.en": 3,
    "tiny": 4,
    "base.en": 5,
    "base": 6,
    "small.en": 7,
    "small": 8,
    "medium.en": 9,
    "medium": 10,
    "large-v1": 11,
    "large-v2": 12,
    "large-v3": 13,
    "large-v3-turbo": 14,
}


class WhisperFullParams(ctypes.Structure):
    """``struct whisper_full_params`` (304 bytes on LP64), every member in header order.

    Callbacks are declared as ``c_void_p``: this module never installs them (they would
    re-acquire the GIL inside the decoding loop), it only has to carry NULLs at the right
    offsets.  String members are ``c_char_p``; whoever assigns one must keep the bytes alive
    until the native call returns.
    """

    _fields_ = [
        ("strategy", ctypes.c_int),  # enum whisper_sampling_strategy
        ("n_threads", ctypes.c_int),
        ("n_max_text_ctx", ctypes.c_int),
        ("offset_ms", ctypes.c_int),
        ("duration_ms", ctypes.c_int),
        ("translate", ctypes.c_bool),
        ("no_context", ctypes.c_bool),
        ("no_timestamps", ctypes.c_bool),
        ("single_segment", ctypes.c_bool),
        ("print_special", ctypes.c_bool),
        ("print_progress", ctypes.c_bool),
        ("print_realtime", ctypes.c_bool),
        ("print_timestamps", ctypes.c_bool),
        ("token_timestamps", ctypes.c_bool),
        ("thold_pt", ctypes.c_float),
        ("thold_ptsum", ctypes.c_float),
        ("max_len", ctypes.c_int),
        ("split_on_word", ctypes.c_bool),
        ("max_tokens", ctypes.c_int),
        ("debug_mode", ctypes.c_bool),
        ("audio_ctx", ctypes.c_int),
        ("tdrz_enable", ctypes.c_bool),
        ("suppress_regex", ctypes.c_char_p),
        ("initial_prompt", ctypes.c_char_p),
        ("carry_initial_prompt", ctypes.c_bool),
        ("prompt_tokens", ctypes.POINTER(ctypes.c_int32)),  # const whisper_token *
        ("prompt_n_tokens", ctypes.c_int),
        ("language", ctypes.c_char_p),
        ("detect_language", ctypes.c_bool),
        ("suppress_blank", ctypes.c_bool),
        ("suppress_nst", ctypes.c_bool),
        ("temperature", ctypes.c_float),
        ("max_initial_ts", ctypes.c_float),
        ("length_penalty", ctypes.c_float),
        ("temperature_inc", ctypes.c_float),
        ("entropy_thold", ctypes.c_float),
        ("logprob_thold", ctypes.c_float),
        ("no_speech_thold", ctypes.c_float),
        ("greedy", WhisperGreedyParams),
        ("beam_search", WhisperBeamSearchParams),
        ("new_segment_callback", ctypes.c_void_p),  # whisper_new_segment_callback
        ("new_segment_callback_user_data", ctypes.c_void_p),
        ("progress_callback", ctypes.c_void_p),  # whisper_progress_callback
        ("progress_callback_user_data", ctypes.c_void_p),
        ("encoder_begin_callback", ctypes.c_void_p),  # whisper_encoder_begin_callback
        ("encoder_begin_callback_user_data", ctypes.c_void_p),
        ("abort_callback", ctypes.c_void_p),  # ggml_abort_callback
        ("abort_callback_user_data", ctypes.c_void_p),
        ("logits_filter_callback", ctypes.c_void_p),  # whisper_logits_filter_callback
        ("logits_filter_callback_user_data", ctypes.c_void_p),
        ("grammar_rules", ctypes.c_void_p),  # const whisper_grammar_element **
        ("n_grammar_rules", ctypes.c_size_t),
        ("i_start_rule", ctypes.c_size_t),
        ("grammar_penalty", ctypes.c_float),
        ("vad", ctypes.c_bool),
        ("vad_model_path", ctypes.c_char_p),
        ("vad_params", WhisperVadParams),
    ]


# --------------------------------------------------------------------------------------
# ABI verification
# --------------------------------------------------------------------------------------


def _f32(value: float) -> float:
    """Round a Python float to the nearest float32, as stored in a C ``float``."""
    return ctypes.c_float(value).value


# (dotted field, expected) for whisper_full_default_params(GREEDY) in 1.8.5.  Spread over
# the whole struct, dense near its end where an inserted/removed member would show.
_GREEDY_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("strategy", WHISPER_SAMPLING_GREEDY),
    ("n_max_text_ctx", 16384),
    ("offset_ms", 0),
    ("duration_ms", 0),
    ("translate", False),
    ("no_context", True),
    ("no_timestamps", False),
    ("print_progress", True),
    ("print_realtime", False),
    ("print_timestamps", True),
    ("token_timestamps", False),
    ("thold_pt", _f32(0.01)),
    ("thold_ptsum", _f32(0.01)),
    ("max_len", 0),
    ("max_tokens", 0),
    ("audio_ctx", 0),
    ("carry_initial_prompt", False),
    ("prompt_n_tokens", 0),
    ("detect_language", False),
    ("suppress_blank", True),
    ("suppress_nst", False),
    ("temperature", 0.0),
    ("max_initial_ts", 1.0),
    ("length_penalty", -1.0),
    ("temperature_inc", _f32(0.2)),
    ("entropy_thold", _f32(2.4)),
    ("logprob_thold", -1.0),
    ("no_speech_thold", _f32(0.6)),
    ("greedy.best_of", 5),
    ("beam_search.beam_size", -1),
    ("beam_search.patience", -1.0),
    ("n_grammar_rules", 0),
    ("i_start_rule", 0),
    ("grammar_penalty", 100.0),
    ("vad", False),
    ("vad_params.threshold", 0.5),
    ("vad_params.min_speech_duration_ms", 250),
    ("vad_params.min_silence_duration_ms", 100),
    ("vad_params.max_speech_duration_s", _f32(_FLT_MAX)),
    ("vad_params.speech_pad_ms", 30),
    ("vad_params.samples_overlap", _f32(0.1)),
)

# The beam-search defaults differ only in the two nested decoder structs.
_BEAM_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("strategy", WHISPER_SAMPLING_BEAM_SEARCH),
    ("greedy.best_of", -1),
    ("beam_search.beam_size", 5),
    ("beam_search.patience", -1.0),
    ("no_speech_thold", _f32(0.6)),
    ("vad_params.speech_pad_ms", 30),
)

# Pointer members that must be NULL by default.  Read as raw addresses (never dereferenced)
# so that a wrong layout produces an error message instead of a segfault.
_NULL_POINTERS: tuple[str, ...] = (
    "suppress_regex",
    "initial_prompt",
    "prompt_tokens",
    "new_segment_callback",
    "new_segment_callback_user_data",
    "progress_callback",
    "progress_callback_user_data",
    "encoder_begin_callback",
    "encoder_begin_callback_user_data",
    "abort_callback",
    "abort_callback_user_data",
    "logits_filter_callback",
    "logits_filter_callback_user_data",
    "grammar_rules",
    "vad_model_path",
)

_CONTEXT_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("use_gpu", True),
    ("flash_attn", True),
    ("gpu_device", 0),
    ("dtw_token_timestamps", False),
    ("dtw_aheads_preset", 0),  # WHISPER_AHEADS_NONE
    ("dtw_n_top", -1),
    ("dtw_aheads.n_heads", 0),
    ("dtw_mem_size", 128 * 1024 * 1024),
)


def _get_field(struct: ctypes.Structure, dotted: str) -> Any:
    """Read ``a.b.c`` from nested ctypes structures."""
    value: Any = struct
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _raw_pointer(struct: ctypes.Structure, name: str) -> int:
    """Address stored in pointer member ``name`` of ``struct`` (0 for NULL), without dereferencing."""
    offset = getattr(type(struct), name).offset
    return ctypes.c_void_p.from_buffer(struct, offset).value or 0


def _compare_fields(struct: ctypes.Structure, expected: tuple[tuple[str, Any], ...], label: str) -> list[str]:
    """List one message per member whose value differs from ``expected``."""
    problems = []
    for dotted, want in expected:
        got = _get_field(struct, dotted)
        if got != want:
            problems.append(f"{label}.{dotted} = {got!r}, expected {want!r}")
    return problems


def _check_version(lib: ctypes.CDLL) -> list[str]:
    """Compare ``whisper_version()`` with ``EXPECTED_VERSION``."""
    raw = lib.whisper_version()
    version = raw.decode("ascii", errors="replace") if raw else None
    if version == EXPECTED_VERSION:
        return []
    return [f"whisper_version() = {version!r}, expected {EXPECTED_VERSION!r}"]


def _check_sizes() -> list[str]:
    """Our Structures must have the sizes computed for LP64 (catches 32-bit/odd ABIs)."""
    problems = []
    expected = (
        (WhisperFullParams, SIZEOF_FULL_PARAMS),
        (WhisperContextParams, SIZEOF_CONTEXT_PARAMS),
        (WhisperTokenData, SIZEOF_TOKEN_DATA),
    )
    for struct, want in expected:
        if ctypes.sizeof(struct) != want:
            problems.append(f"sizeof({struct.__name__}) = {ctypes.sizeof(struct)}, expected {want}")
    return problems


def _check_full_defaults(lib: ctypes.CDLL, strategy: int, expected: tuple[tuple[str, Any], ...]) -> list[str]:
    """Read the library's heap-allocated default full params through our layout and compare."""
    label = f"whisper_full_params[{'greedy' if strategy == WHISPER_SAMPLING_GREEDY else 'beam'}]"
    pointer = lib.whisper_full_default_params_by_ref(strategy)
    if not pointer:
        return [f"whisper_full_default_params_by_ref({strategy}) returned NULL"]
    try:
        params = pointer.contents
        problems = _compare_fields(params, expected, label)
        problems += [f"{label}.{n} is not NULL" for n in _NULL_POINTERS if _raw_pointer(params, n)]
        # Only dereference the default language ("en") once every other member lined up.
        if not problems:
            address = _raw_pointer(params, "language")
            language = ctypes.string_at(address) if address else None
            if language != b"en":
                problems.append(f"{label}.language = {language!r}, expected b'en'")
        return problems
    finally:
        lib.whisper_free_params(pointer)


def _check_context_defaults(lib: ctypes.CDLL) -> list[str]:
    """Read the library's heap-allocated default context params through our layout and compare."""
    pointer = lib.whisper_context_default_params_by_ref()
    if not pointer:
        return ["whisper_context_default_params_by_ref() returned NULL"]
    try:
        params = pointer.contents
        problems = _compare_fields(params, _CONTEXT_DEFAULTS, "whisper_context_params")
        if _raw_pointer(params.dtw_aheads, "heads"):
            problems.append("whisper_context_params.dtw_aheads.heads is not NULL")
        return problems
    finally:
        lib.whisper_free_context_params(pointer)


# whisper_vad_default_context_params() in 1.8.5 (returned by value: read, nothing to free).
_VAD_CONTEXT_DEFAULTS: tuple[tuple[str, Any], ...] = (("n_threads", 4), ("use_gpu", False), ("gpu_device", 0))


def _check_vad_context_defaults(lib: ctypes.CDLL) -> list[str]:
    return _compare_fields(
        lib.whisper_vad_default_context_params(), _VAD_CONTEXT_DEFAULTS, "whisper_vad_context_params"
    )


def check_abi(lib: ctypes.CDLL) -> None:
    """Verify that ``lib`` is libwhisper 1.8.5 with exactly the struct layouts declared here.

    ``lib`` must come from ``load_library``.  Checks the version string, our struct sizes,
    and dozens of known default values read through our Structures from the library's own
    ``*_default_params_by_ref`` allocations (freed again afterwards).  Raises
    ``NativeABIError`` listing every mismatch; returns ``None`` when all is well.
    """
    problems = _check_version(lib) + _check_sizes()
    if not problems:  # reading through a layout of the wrong size would overrun the heap block
        problems += _check_full_defaults(lib, WHISPER_SAMPLING_GREEDY, _GREEDY_DEFAULTS)
        problems += _check_full_defaults(lib, WHISPER_SAMPLING_BEAM_SEARCH, _BEAM_DEFAULTS)
        problems += _check_context_defaults(lib)
        problems += _check_vad_context_defaults(lib)
    if problems:
        raise NativeABIError("libwhisper ABI mismatch: " + "; ".join(problems))
    logger.debug("libwhisper {} ABI check passed", EXPECTED_VERSION)
