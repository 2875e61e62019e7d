"""ctypes over the libwhisper that the pinned pywhispercpp wheel ships (or our patched build of it).

`structs` declares whisper.cpp's structs, `abi` checks them against the library, `loader` finds
and loads it, `context` holds one context (the weights) and a state per concurrent call, `full`
runs whisper_full on a state, `group` the batched passes over several states (whisper/patches),
`vad` the speech detector. The names below are the API the engine uses.
"""

from worker.engine.libwhisper.context import NativeCallError, NativeContext, NativeState, tokenize
from worker.engine.libwhisper.full import NativeResult, NativeSegment, NativeToken, detect_language, transcribe
from worker.engine.libwhisper.loader import open_library
from worker.engine.libwhisper.structs import NativeABIError

__all__ = [
    "NativeABIError",
    "NativeCallError",
    "NativeContext",
    "NativeResult",
    "NativeSegment",
    "NativeState",
    "NativeToken",
    "detect_language",
    "open_library",
    "tokenize",
    "transcribe",
]
