"""The CTranslate2 -> ggml converter's parts, on small inputs built here and on the real package."""

import struct

import numpy as np
import pytest

from worker.engine import ggml_convert
from worker.engine.quantize import QUANT_TYPES_BY_GGML
from worker.errors import ModelConversionError


def ct2_bytes(variables: dict[str, np.ndarray], aliases: dict[str, str], *, version: int = 6) -> bytes:
    """A CTranslate2 model.bin written by the test, following the documented layout."""
    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, array in variables.items():
        out += string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        out += struct.pack("<BI", dtype_ids[array.dtype], array.nbytes) + array.tobytes()
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += string(alias) + string(target)
    return out


def test_reads_variables_dtypes_scalars_and_aliases_across_parts(tmp_path):
    weight = np.arange(12, dtype=np.float16).reshape(3, 4)
    data = ct2_bytes(
        {"decoder/embeddings/weight": weight, "decoder/num_heads": np.array(6, dtype=np.int16)},
        {"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    (tmp_path / "model.bin.part1").write_bytes(data[:50])
    (tmp_path / "model.bin.part2").write_bytes(data[50:])

    (tmp_path / "vocabulary.txt").write_text("a\nb\n")
    source = ggml_convert.Ct2Source.from_dir(tmp_path)
    variables = ggml_convert.read_ct2_variables(source.model_parts)

    assert source.model_parts == (tmp_path / "model.bin.part1", tmp_path / "model.bin.part2")
    np.testing.assert_array_equal(variables["decoder/embeddings/weight"], weight)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    assert int(variables["decoder/num_heads"]) == 6


def test_rejects_other_binary_versions_and_truncation(tmp_path):
    data = ct2_bytes({"x": np.zeros(4, dtype=np.float32)}, {}, version=5)
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(ModelConversionError, match="version 5"):
        ggml_convert.read_ct2_variables([tmp_path / "model.bin"])

    (tmp_path / "model.bin").write_bytes(ct2_bytes({"x": np.zeros(4, dtype=np.float32)}, {})[:-10])
    with pytest.raises(ModelConversionError, match="truncated"):
        ggml_convert.read_ct2_variables([tmp_path / "model.bin"])


def test_mel_filterbank_is_slaney_shaped():
    filters = ggml_convert.mel_filterbank(80)

    assert filters.shape == (80, 201) and filters.dtype == np.float32
    assert (filters >= 0).all()
    # Each filter is one triangle: non-zero on a contiguous run of FFT bins.
    for row in filters:
        nonzero = np.flatnonzero(row)
        assert nonzero.size and (np.diff(nonzero) == 1).all()
    # Slaney normalisation: every triangle has (about) the same area, 2 / bandwidth * bandwidth / 2.
    areas = filters.sum(axis=1) * (8000 / 200)
    assert np.allclose(areas[10:], 1.0, rtol=0.1)
    # Centres rise with the filter index and span the band up to Nyquist.
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[0] <= 2 and peaks[-1] >= 180


def test_mel_filterbank_handles_128_bins_for_large_v3():
    assert ggml_convert.mel_filterbank(128).shape == (128, 201)


def test_bpe_spellings_decode_to_raw_bytes():
    assert ggml_convert.token_bytes(["Ġthe", "Ċ", "hello", "Ã©"]) == [b" the", b"\n", b"hello", "é".encode()]


def test_converted_package_model_has_whisper_cpp_layout(tiny_en_path):
    with open(tiny_en_path, "rb") as f:
        magic, *hparams = struct.unpack("<I11i", f.read(48))
        n_mel, n_fft = struct.unpack("<ii", f.read(8))
        filters = np.frombuffer(f.read(n_mel * n_fft * 4), dtype=np.float32).reshape(n_mel, n_fft)
        (n_tokens,) = struct.unpack("<i", f.read(4))

    assert magic == ggml_convert.GGML_MAGIC
    assert hparams == [51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1]
    np.testing.assert_array_equal(filters, ggml_convert.mel_filterbank(80))
    assert n_tokens == 50256  # the ordinary tokens, up to <|endoftext|>


def tensor_types(path) -> tuple[list[int], dict[str, tuple[int, tuple[int, ...]]]]:
    """(hparams, {tensor name: (ggml type, dims)}) read back from a ggml file."""
    data = open(path, "rb").read()
    _magic, *hparams = struct.unpack_from("<I11i", data)
    n_mel, n_fft = struct.unpack_from("<ii", data, 48)
    pos = 56 + n_mel * n_fft * 4
    (n_tokens,) = struct.unpack_from("<i", data, pos)
    pos += 4
    for _ in range(n_tokens):
        pos += 4 + struct.unpack_from("<i", data, pos)[0]
    tensors = {}
    while pos < len(data):
        n_dims, name_len, ggml_type = struct.unpack_from("<iii", data, pos)
        dims = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        name = data[pos + 12 + 4 * n_dims : pos + 12 + 4 * n_dims + name_len].decode()
        pos += 12 + 4 * n_dims + name_len
        elements = int(np.prod(dims))
        pos += {0: elements * 4, 1: elements * 2}.get(ggml_type) or QUANT_TYPES_BY_GGML[ggml_type].nbytes(dims)
        tensors[name] = (ggml_type, dims)
    assert pos == len(data)
    return hparams, tensors


def test_a_quantized_conversion_follows_whisper_cpps_quantize_rules(offline_downloader):
    hparams, tensors = tensor_types(offline_downloader.ensure_model_exists("tiny.en-q4_0"))

    assert hparams[-1] == 2 * 1000 + 2  # ftype: GGML_QNT_VERSION 2, MOSTLY_Q4_0
    assert tensors["decoder.token_embedding.weight"][0] == 2  # quantized, like every 2-D weight
    assert tensors["encoder.blocks.0.attn.query.weight"][0] == 2
    assert tensors["decoder.blocks.3.mlp.2.weight"][0] == 2
    assert tensors["encoder.conv1.weight"][0] == 1 and len(tensors["encoder.conv1.weight"][1]) == 3  # f16
    for name in ("encoder.conv1.bias", "encoder.positional_embedding", "decoder.positional_embedding"):
        assert tensors[name][0] == 0, name  # 2-D, but f32
    assert all(t == 0 for t, dims in tensors.values() if len(dims) == 1)  # norms and biases f32
