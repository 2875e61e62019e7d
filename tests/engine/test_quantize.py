"""The block formats against ggml itself: the library in the pywhispercpp wheel quantizes and
dequantizes the same arrays (ctypes over its libggml-base), and a quantized model of each type
transcribes real speech."""

import ctypes

import numpy as np
import pytest

from worker.engine.libwhisper.loader import find_library
from worker.engine.quantize import QUANT_TYPES, QuantType

RNG = np.random.default_rng(7)

# ggml_to_float_t: void (*)(const void * x, float * y, int64_t k)
ToFloat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class TypeTraits(ctypes.Structure):
    """ggml 0.13's struct ggml_type_traits (libggml-base), up to the two converters."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ToFloat),
        ("from_float_ref", ctypes.c_void_p),
    ]


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    """The libggml-base that the wheel's libwhisper links (the same directory, hashed name)."""
    (path,) = find_library().parent.glob("libggml-base*.so*")
    lib = ctypes.CDLL(str(path))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    return lib


def weights(rows: int, cols: int) -> np.ndarray:
    """Weight-like values, with the cases the rounding rules care about mixed in."""
    w = (RNG.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block: scale 0
    w[1, :32] = 0.01  # a constant block
    w[2, 5] = -0.9  # a negative extreme (the sign of `max` matters for the _0 formats)
    w[3, :32] = np.linspace(-1, 1, 32, dtype=np.float32)  # values on the rounding midpoints
    return w


def ggml_quantize(ggml: ctypes.CDLL, qt: QuantType, array: np.ndarray) -> bytes:
    src = np.ascontiguousarray(array, dtype=np.float32)
    dst = ctypes.create_string_buffer(qt.nbytes(array.shape))
    written = ggml.ggml_quantize_chunk(qt.ggml_type, src.ctypes.data, dst, 0, array.shape[0], array.shape[1], None)
    assert written == len(dst)
    return dst.raw


def ggml_dequantize(ggml: ctypes.CDLL, qt: QuantType, data: bytes, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.float32)
    ggml.ggml_get_type_traits(qt.ggml_type).contents.to_float(
        data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), count
    )
    return out


@pytest.mark.parametrize("name", sorted(QUANT_TYPES))
def test_our_blocks_are_ggmls_blocks(ggml, name):
    qt = QUANT_TYPES[name]
    traits = ggml.ggml_get_type_traits(qt.ggml_type).contents
    assert (traits.type_name.decode(), traits.blck_size, traits.type_size) == (name, 32, qt.block_bytes)
    array = weights(64, 384)
    assert qt.quantize(array) == ggml_quantize(ggml, qt, array)


@pytest.mark.parametrize("name", sorted(QUANT_TYPES))
def test_round_trip_matches_ggmls_dequantization_within_the_formats_error(ggml, name):
    qt = QUANT_TYPES[name]
    array = weights(32, 512)
    data = qt.quantize(array)
    ours = qt.dequantize(data, array.shape)
    np.testing.assert_array_equal(ours, ggml_dequantize(ggml, qt, data, array.size).reshape(array.shape))
    # Each value lands within half a step of its block's grid, or one step for the `_0` 4/5-bit
    # formats (their grid is asymmetric: the top code is clamped), plus the f16 rounding of the scale.
    blocks, restored = array.reshape(-1, 32), ours.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    levels, steps = {"q4_0": (8, 1.0), "q5_0": (16, 1.0), "q8_0": (127, 0.5)}[name]
    assert np.all(np.abs(restored - blocks) <= steps * amax / levels + amax * 2**-10)
    assert np.all(restored[0] == 0)  # the all-zero block stays zero


def test_rows_that_are_not_whole_blocks_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        QUANT_TYPES["q4_0"].quantize(np.zeros((2, 40), dtype=np.float32))
