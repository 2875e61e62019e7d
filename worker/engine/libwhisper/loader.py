"""Locating, loading and declaring the libwhisper shipped inside the pywhispercpp wheel (ctypes).

`context` builds on this: `open_library()` returns a CDLL whose every function used
there has its restype/argtypes declared, whose struct layouts were checked against
`worker.engine.libwhisper.structs` (by `abi`), and whose log output goes to loguru at DEBUG.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import sysconfig
from pathlib import Path
from typing import Any

from loguru import logger

from worker.engine.libwhisper.abi import check_abi
from worker.engine.libwhisper.structs import (
    NativeABIError,
    WhisperContextParams,
    WhisperFullParams,
    WhisperTokenData,
    WhisperVadContextParams,
)

# enum ggml_log_level, used only to label forwarded log lines.
_GGML_LOG_LEVELS = {0: "none", 1: "debug", 2: "info", 3: "warn", 4: "error", 5: "cont"}
# ggml_backend_load_best's line, e.g. "load_backend: loaded CPU backend from /opt/.../libggml-cpu-haswell.so"
_LOADED_BACKEND = re.compile(r"loaded (?P<name>\S+) backend from \S*/(?P<file>[^/\s]+)")


# ggml_log_callback: void (*)(enum ggml_log_level level, const char * text, void * user_data)
GgmlLogCallback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

FloatPtr = ctypes.POINTER(ctypes.c_float)
_FullParamsPtr = ctypes.POINTER(WhisperFullParams)
_ContextParamsPtr = ctypes.POINTER(WhisperContextParams)

# (restype, argtypes) of every libwhisper function this module calls.  Contexts and states
# are opaque, so plain c_void_p handles are enough.
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "whisper_version": (ctypes.c_char_p, []),
    # ggml's backend registry (libggml, a dependency of libwhisper: found through its handle)
    "ggml_backend_reg_count": (ctypes.c_size_t, []),
    "ggml_backend_load_all": (None, []),
    "whisper_context_default_params_by_ref": (_ContextParamsPtr, []),
    "whisper_free_context_params": (None, [_ContextParamsPtr]),
    "whisper_full_default_params_by_ref": (_FullParamsPtr, [ctypes.c_int]),
    "whisper_free_params": (None, [_FullParamsPtr]),
    "whisper_init_from_file_with_params_no_state": (
        ctypes.c_void_p,
        [ctypes.c_char_p, WhisperContextParams],
    ),
    "whisper_init_state": (ctypes.c_void_p, [ctypes.c_void_p]),
    "whisper_free": (None, [ctypes.c_void_p]),
    "whisper_free_state": (None, [ctypes.c_void_p]),
    "whisper_is_multilingual": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_full_with_state": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, WhisperFullParams, FloatPtr, ctypes.c_int],
    ),
    "whisper_full_n_segments_from_state": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_full_get_segment_t0_from_state": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_int]),
    "whisper_full_get_segment_t1_from_state": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_int]),
    "whisper_full_get_segment_text_from_state": (
        ctypes.c_char_p,
        [ctypes.c_void_p, ctypes.c_int],
    ),
    "whisper_full_lang_id_from_state": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_full_n_tokens_from_state": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "whisper_full_get_token_data_from_state": (
        WhisperTokenData,
        [ctypes.c_void_p, ctypes.c_int, ctypes.c_int],
    ),
    "whisper_full_get_token_text_from_state": (
        ctypes.c_char_p,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int],
    ),
    "whisper_token_eot": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_full_get_segment_no_speech_prob_from_state": (ctypes.c_float, [ctypes.c_void_p, ctypes.c_int]),
    "whisper_token_sot": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_token_beg": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_token_not": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_token_translate": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_token_transcribe": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_token_lang": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_int]),
    "whisper_token_to_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int32]),
    "whisper_n_audio_ctx": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_model_n_mels": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_set_mel_with_state": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, FloatPtr, ctypes.c_int, ctypes.c_int],
    ),
    "whisper_token_prev": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_token_nosp": (ctypes.c_int32, [ctypes.c_void_p]),
    "whisper_n_vocab": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_n_text_ctx": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_tokenize": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int],
    ),
    "whisper_decode_with_state": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int, ctypes.c_int, ctypes.c_int],
    ),
    "whisper_get_logits_from_state": (FloatPtr, [ctypes.c_void_p]),
    "whisper_lang_max_id": (ctypes.c_int, []),
    "whisper_lang_id": (ctypes.c_int, [ctypes.c_char_p]),
    "whisper_lang_str": (ctypes.c_char_p, [ctypes.c_int]),
    "whisper_pcm_to_mel_with_state": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, FloatPtr, ctypes.c_int, ctypes.c_int],
    ),
    "whisper_lang_auto_detect_with_state": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, FloatPtr],
    ),
    "whisper_log_set": (None, [GgmlLogCallback, ctypes.c_void_p]),
    # Silero VAD (worker.engine.libwhisper.vad): a context of its own, fed 512-sample windows.
    "whisper_vad_default_context_params": (WhisperVadContextParams, []),
    "whisper_vad_init_from_file_with_params": (ctypes.c_void_p, [ctypes.c_char_p, WhisperVadContextParams]),
    "whisper_vad_detect_speech_no_reset": (ctypes.c_bool, [ctypes.c_void_p, FloatPtr, ctypes.c_int]),
    "whisper_vad_reset_state": (None, [ctypes.c_void_p]),
    "whisper_vad_n_probs": (ctypes.c_int, [ctypes.c_void_p]),
    "whisper_vad_probs": (FloatPtr, [ctypes.c_void_p]),
    "whisper_vad_free": (None, [ctypes.c_void_p]),
}


# whisper_group (whisper/patches: batched passes over several states), in libwhisper builds that carry
# the patch (`make native-whisper`, the image); the PyPI wheel has none of them.
_StatePtrs = ctypes.POINTER(ctypes.c_void_p)
_Ints = ctypes.POINTER(ctypes.c_int)
_GROUP_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "whisper_group_init": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]),
    "whisper_group_free": (None, [ctypes.c_void_p]),
    "whisper_group_encode": (ctypes.c_int, [ctypes.c_void_p, _StatePtrs, _Ints, ctypes.c_int, ctypes.c_int]),
    "whisper_group_decode": (
        ctypes.c_int,
        [ctypes.c_void_p, _StatePtrs, ctypes.POINTER(ctypes.c_int32), _Ints, _Ints, ctypes.c_int, ctypes.c_int],
    ),
}


def has_group(lib: ctypes.CDLL) -> bool:
    """Whether this libwhisper carries the whisper_group patch (batched decoding across states)."""
    return all(hasattr(lib, name) for name in _GROUP_SIGNATURES)


# --------------------------------------------------------------------------------------
# Locating and loading the library
# --------------------------------------------------------------------------------------


def _candidate_dirs() -> list[Path]:
    """Directories that may hold the wheel's libraries, most specific first (no imports)."""
    dirs: list[Path] = []
    spec = importlib.util.find_spec("_pywhispercpp")  # locates the extension, does not run it
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent)
    for key in ("platlib", "purelib"):
        site_dir = Path(sysconfig.get_paths()[key])
        if site_dir not in dirs:
            dirs.append(site_dir)
    return dirs


def _vendored_whisper(libs_dir: Path) -> Path | None:
    """Return the single auditwheel-renamed ``libwhisper-<hash>.so*`` in ``libs_dir``, if any."""
    matches = sorted(libs_dir.glob("libwhisper-*.so*"))
    if len(matches) > 1:
        raise NativeABIError(f"several libwhisper copies in {libs_dir}: {[m.name for m in matches]}")
    return matches[0] if matches else None


def find_library() -> Path:
    """Locate the libwhisper shared library of the installed pywhispercpp wheel.

    Returns ``<site-packages>/pywhispercpp.libs/libwhisper-<hash>.so.<ver>`` when present,
    otherwise ``<site-packages>/libwhisper.so``.  Never imports pywhispercpp.  Raises
    ``FileNotFoundError`` when neither exists and ``NativeABIError`` when the libs dir holds
    several libwhisper copies (a broken install: we could not tell which one is linked).

    Why the vendored copy: ``_pywhispercpp`` links against it by its hashed SONAME (see
    ``readelf -d``), and dlopen() of that same file returns the already-mapped object, so
    after ``import _pywhispercpp`` /proc/self/maps still shows exactly one libwhisper.
    ``site-packages/libwhisper.so`` is a second build with SONAME ``libwhisper.so.1``;
    loading it would map a second libwhisper with its own global state (log callback,
    language tables) next to pywhispercpp's, while both share the vendored ggml libraries.
    """
    dirs = _candidate_dirs()
    for directory in dirs:
        vendored = _vendored_whisper(directory / "pywhispercpp.libs")
        if vendored is not None:
            return vendored
    for directory in dirs:
        plain = directory / "libwhisper.so"
        if plain.is_file():
            return plain
    raise FileNotFoundError(f"libwhisper not found in {[str(d) for d in dirs]}")


def load_library(path: Path) -> ctypes.CDLL:
    """Load libwhisper from ``path`` and declare restype/argtypes of every function used here.

    ``ctypes.CDLL`` (unlike ``PyDLL``) releases the GIL for the duration of each foreign
    call; that is what lets several ``whisper_full_with_state`` calls on different states
    run truly in parallel from Python threads.  Does not verify the ABI: call ``check_abi``.
    """
    lib = ctypes.CDLL(str(path))
    optional = _GROUP_SIGNATURES if has_group(lib) else {}
    for name, (restype, argtypes) in {**_SIGNATURES, **optional}.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    logger.debug("loaded libwhisper from {}", path)
    return lib


def open_library(path: Path | None = None) -> ctypes.CDLL:
    """Convenience: ``find_library`` (unless ``path``) + ``load_library`` + ``check_abi``
    + ``install_log_forwarding``.  Raises ``NativeABIError`` on any mismatch."""
    lib = load_library(path if path is not None else find_library())
    check_abi(lib)
    install_log_forwarding(lib)
    load_backends(lib)
    return lib


def load_backends(lib: ctypes.CDLL) -> None:
    """Register ggml's backends when the build left that to the program.

    A libwhisper built with GGML_BACKEND_DL (the Docker image's: a CPU backend for each x86-64 level
    in GGML_BACKEND_DIR, the best one this CPU runs chosen at load time) has no backend registered
    until someone loads them, and whisper.cpp leaves that to its programs (whisper-cli calls
    ggml_backend_load_all). The PyPI wheel and `make native-whisper` link the CPU backend in: nothing
    to do. Idempotent; ggml logs which file it loaded (DEBUG, through install_log_forwarding).
    """
    if lib.ggml_backend_reg_count() > 0:
        return
    lib.ggml_backend_load_all()
    if lib.ggml_backend_reg_count() == 0:
        raise NativeABIError("libwhisper has no ggml backend and none could be loaded (GGML_BACKEND_DIR?)")


# --------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------


def _forward_log(level: int, text: bytes | None, _user_data: int | None) -> None:
    """ggml/whisper log sink: one ``logger.debug`` line per message (may run on native threads)."""
    if not text:
        return
    message = text.decode("utf-8", errors="replace").rstrip("\n")
    if loaded := _LOADED_BACKEND.search(message):
        # Which x86-64 level ggml chose (the image's engine): an operator sees it without DEBUG, and a CPU
        # (or a VM) that hides a feature, and so gets an older level's kernels, shows here.
        logger.info("ggml loaded its {} backend: {}", loaded["name"], loaded["file"])
    elif message:
        logger.debug("whisper.cpp [{}] {}", _GGML_LOG_LEVELS.get(level, str(level)), message)


# libwhisper keeps only the raw function pointer; this module-level reference keeps the
# ctypes thunk alive for the lifetime of the process.
_LOG_CALLBACK = GgmlLogCallback(_forward_log)


def install_log_forwarding(lib: ctypes.CDLL) -> None:
    """Route whisper.cpp and ggml log output (normally on stderr) to ``logger.debug``.

    ``whisper_log_set`` also calls ``ggml_log_set``, so ggml's own messages are covered.  The
    setting is process-global for this libwhisper copy (it also silences pywhispercpp when
    both are used in one process, since they share the library).
    """
    lib.whisper_log_set(_LOG_CALLBACK, None)
