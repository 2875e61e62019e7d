"""The start-up check that the loaded libwhisper is the one `worker.engine.libwhisper.structs` declares.

`whisper_full_params` is passed BY VALUE to whisper_full_with_state, so a layout that does not
match the loaded library is memory corruption, not an exception. `check_abi` compares the
library's version string, the struct sizes and a spread of default values (dense near the end
of each struct, where an inserted or removed member shows) before anything is called with them.
"""

from __future__ import annotations

import ctypes
from typing import Any

from loguru import logger

from worker.engine.libwhisper.structs import (
    SIZEOF_CONTEXT_PARAMS,
    SIZEOF_FULL_PARAMS,
    SIZEOF_TOKEN_DATA,
    WHISPER_SAMPLING_BEAM_SEARCH,
    WHISPER_SAMPLING_GREEDY,
    NativeABIError,
    WhisperContextParams,
    WhisperFullParams,
    WhisperTokenData,
)

# The release whose include/whisper.h the layouts in `structs` were transcribed from.
EXPECTED_VERSION = "1.8.5"

# FLT_MAX: the 1.8.5 default of whisper_vad_params.max_speech_duration_s (i.e. "no limit").
_FLT_MAX = 3.4028234663852886e38


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
    """Verify that ``lib`` is libwhisper 1.8.5 with exactly the struct layouts declared in ``structs``.

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
