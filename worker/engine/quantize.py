"""ggml's block quantization formats, in numpy: what the converter writes for a quantized model.

Each format cuts a row of weights into blocks of 32 and stores a block as an f16 scale (and, for
the `_1` kinds, an f16 minimum) plus small integers; libwhisper's CPU kernels multiply them
directly. The arithmetic follows ggml's reference quantizers step for step, in float32, so the
bytes equal what ggml itself writes (a test compares them with the library's
`ggml_quantize_chunk`, and our dequantization with its `to_float`).

    q8_0  34 bytes / 32 weights   d = amax / 127,  q = round(x / d)                  (int8)
    q5_0  22 bytes / 32 weights   d = max / -16,   q = min(31, trunc(x / d + 16.5))  (5 bits)
    q4_0  18 bytes / 32 weights   d = max / -8,    q = min(15, trunc(x / d + 8.5))   (4 bits)

(`max` is the block's value of largest magnitude, with its sign.) Block layouts: q8_0 = d, 32 x
int8; q4_0 = d, 16 bytes of nibbles (low nibble = weight j, high = weight j + 16); q5_0 = d,
32 high bits as a little-endian u32 (bit j for weight j), then the low nibbles as in q4_0.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BLOCK = 32


@dataclass(frozen=True)
class QuantType:
    """One ggml block format: its numbers in ggml's enums and its numpy (de)quantizer."""

    name: str
    ggml_type: int  # enum ggml_type: the tensor's type in the file
    ftype: int  # enum ggml_ftype: the file's type, written in the hparams
    block_bytes: int
    quantize_blocks: Callable[[np.ndarray], np.ndarray]  # [n, 32] float32 -> [n, block_bytes] uint8
    dequantize_blocks: Callable[[np.ndarray], np.ndarray]  # [n, block_bytes] uint8 -> [n, 32] float32

    def quantize(self, array: np.ndarray) -> bytes:
        """Quantize a 2-D array row by row (its rows must be a whole number of blocks)."""
        if array.ndim != 2 or array.shape[1] % BLOCK:
            raise ValueError(f"{self.name} needs 2-D rows of a multiple of {BLOCK} values, got {array.shape}")
        blocks = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, BLOCK)
        return self.quantize_blocks(blocks).tobytes()

    def dequantize(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, self.block_bytes)
        return self.dequantize_blocks(raw).reshape(shape)

    def nbytes(self, shape: tuple[int, ...]) -> int:
        return int(np.prod(shape)) // BLOCK * self.block_bytes


def _signed_max(blocks: np.ndarray) -> np.ndarray:
    """Each block's value of largest magnitude, sign kept (the first one on a tie, as ggml)."""
    return blocks[np.arange(len(blocks)), np.argmax(np.abs(blocks), axis=1)]


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def _scale_bytes(d: np.ndarray) -> np.ndarray:
    return d.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _scale_of(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw[:, :2]).view(np.float16).astype(np.float32)


def _offset_codes(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale d and codes 0..levels-1 of the `_0` formats: x is about (code - levels/2) * d."""
    half = levels // 2
    d = (_signed_max(blocks) / np.float32(-half)).astype(np.float32)
    scaled = blocks * _inverse(d)[:, None] + np.float32(half + 0.5)  # float32, as ggml computes it
    return d, np.minimum(levels - 1, np.trunc(scaled)).astype(np.uint8)  # (int8_t) truncates


def _nibbles(codes: np.ndarray) -> np.ndarray:
    return (codes[:, :16] & 0x0F) | ((codes[:, 16:] & 0x0F) << 4)


def _unnibble(packed: np.ndarray) -> np.ndarray:
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


def _quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    d, codes = _offset_codes(blocks, 16)
    return np.concatenate([_scale_bytes(d), _nibbles(codes)], axis=1)


def _dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    codes = _unnibble(raw[:, 2:18]).astype(np.float32)
    return (codes - 8) * _scale_of(raw)


def _quantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    d, codes = _offset_codes(blocks, 32)
    high = ((codes >> 4) & 1).astype(np.uint32) << np.arange(BLOCK, dtype=np.uint32)
    qh = np.bitwise_or.reduce(high, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)
    return np.concatenate([_scale_bytes(d), qh, _nibbles(codes)], axis=1)


def _dequantize_q5_0(raw: np.ndarray) -> np.ndarray:
    qh = np.ascontiguousarray(raw[:, 2:6]).view("<u4")
    high = ((qh >> np.arange(BLOCK, dtype=np.uint32)) & 1).astype(np.uint8)
    codes = (_unnibble(raw[:, 6:22]) | (high << 4)).astype(np.float32)
    return (codes - 16) * _scale_of(raw)


def _quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
    scaled = (blocks * _inverse(d)[:, None]).astype(np.float64)  # the float32 product, exactly
    codes = np.trunc(scaled + np.copysign(0.5, scaled)).astype(np.int8)  # roundf: half away from zero
    return np.concatenate([_scale_bytes(d), codes.view(np.uint8)], axis=1)


def _dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    return raw[:, 2:].view(np.int8).astype(np.float32) * _scale_of(raw)


# ggml_type: Q4_0 = 2, Q5_0 = 6, Q8_0 = 8; ggml_ftype (MOSTLY_*): Q4_0 = 2, Q8_0 = 7, Q5_0 = 8.
QUANT_TYPES: dict[str, QuantType] = {
    t.name: t
    for t in (
        QuantType("q4_0", 2, 2, 18, _quantize_q4_0, _dequantize_q4_0),
        QuantType("q5_0", 6, 8, 22, _quantize_q5_0, _dequantize_q5_0),
        QuantType("q8_0", 8, 7, 34, _quantize_q8_0, _dequantize_q8_0),
    )
}

QUANT_TYPES_BY_GGML: dict[int, QuantType] = {t.ggml_type: t for t in QUANT_TYPES.values()}

# enum ggml_ftype of every file type the model table names (libwhisper reads all of them; the
# converter writes f16 and QUANT_TYPES).
FILE_TYPES = {"f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}

# A quantized file's hparams carry ftype + 1000 * GGML_QNT_VERSION (whisper.cpp reads it modulo 1000).
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000
