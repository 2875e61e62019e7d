"""whisper.cpp 1.8.5's public structs, declared for ctypes (`abi.check_abi` checks them against the library).

`whisper_full_params` is passed BY VALUE to whisper_full_with_state, so a layout that does not
match the loaded library is memory corruption, not an exception: nothing is called with these
before `worker.engine.libwhisper.abi` has compared the library's version, sizes and defaults with them.
The layouts are transcribed from include/whisper.h for LP64 Linux (x86_64 / aarch64).
"""

from __future__ import annotations

import ctypes

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


class NativeABIError(Exception):
    """The loaded libwhisper does not match the version/struct layout these declarations were written for."""


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
