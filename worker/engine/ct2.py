"""Read a CTranslate2 Whisper model (faster-whisper's format): its variables and its vocabulary.

The reading half of `worker.engine.ggml_convert`, which maps what is read here to whisper.cpp's names
and writes the ggml file.

CTranslate2 `model.bin` (binary version 6), little endian:
    u32 version, str spec name, u32 revision, u32 n_variables,
    n_variables x (str name, u8 rank, rank x u32 dim, u8 dtype, u32 n_bytes, bytes),
    u32 n_aliases, n_aliases x (str alias, str target)
where `str` is u16 length (including a trailing NUL) followed by the bytes.
"""

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.errors import ModelConversionError

_CT2_BINARY_VERSION = 6
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass(frozen=True)
class Ct2Source:
    """The files of one CTranslate2 Whisper model; `model_parts` concatenate to model.bin."""

    model_parts: tuple[Path, ...]
    vocabulary: Path

    @classmethod
    def from_dir(cls, directory: Path) -> "Ct2Source":
        """Find model.bin (or model.bin.part1..N) and vocabulary.txt/.json in one directory."""
        single = directory / "model.bin"
        parts = (single,) if single.is_file() else _numbered_parts(directory, "model.bin.part")
        return cls(model_parts=parts, vocabulary=find_vocabulary(directory))


def _numbered_parts(directory: Path, prefix: str) -> tuple[Path, ...]:
    parts = sorted(directory.glob(prefix + "*"), key=lambda p: int(p.name[len(prefix) :] or 0))
    if not parts:
        raise ModelConversionError(f"no model.bin or {prefix}N in {directory}")
    return tuple(parts)


def find_vocabulary(directory: Path) -> Path:
    """Return the vocabulary file of a CTranslate2 model directory (txt or json)."""
    for name in ("vocabulary.txt", "vocabulary.json"):
        if (directory / name).is_file():
            return directory / name
    raise ModelConversionError(f"no vocabulary.txt or vocabulary.json in {directory}")


class _Ct2Reader:
    """Sequential little-endian reader over the bytes of a model.bin."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._data):
            raise ModelConversionError("model.bin is truncated")
        values = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += size
        return values

    def string(self) -> str:
        (length,) = self.unpack("<H")
        raw = bytes(self._data[self._pos : self._pos + length])
        self._pos += length
        return raw.rstrip(b"\0").decode("utf-8")

    def array(self, dtype: type, shape: tuple[int, ...], n_bytes: int) -> np.ndarray:
        if self._pos + n_bytes > len(self._data):
            raise ModelConversionError("model.bin is truncated")
        raw = self._data[self._pos : self._pos + n_bytes]
        self._pos += n_bytes
        return np.frombuffer(raw, dtype=dtype).reshape(shape)


def read_ct2_variables(parts: Sequence[Path]) -> dict[str, np.ndarray]:
    """Read every variable of a CTranslate2 model.bin (given as one or more parts).

    Aliases (e.g. decoder/projection/weight -> decoder/embeddings/weight) resolve to the
    same array. Arrays are read-only views into the file's bytes.
    """
    reader = _Ct2Reader(b"".join(part.read_bytes() for part in parts))
    (version,) = reader.unpack("<I")
    if version != _CT2_BINARY_VERSION:
        raise ModelConversionError(f"unsupported CTranslate2 binary version {version} (need 6)")
    spec = reader.string()
    if spec != "WhisperSpec":
        raise ModelConversionError(f"not a Whisper model: spec is {spec!r}")
    reader.unpack("<I")  # spec revision
    (count,) = reader.unpack("<I")
    variables = dict(_read_variable(reader) for _ in range(count))
    (n_aliases,) = reader.unpack("<I")
    for _ in range(n_aliases):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return variables


def _read_variable(reader: _Ct2Reader) -> tuple[str, np.ndarray]:
    name = reader.string()
    (rank,) = reader.unpack("<B")
    shape = reader.unpack(f"<{rank}I")
    dtype_id, n_bytes = reader.unpack("<BI")
    if dtype_id not in _CT2_DTYPES:
        raise ModelConversionError(f"{name}: unsupported CTranslate2 dtype id {dtype_id}")
    return name, reader.array(_CT2_DTYPES[dtype_id], shape, n_bytes)


def read_vocabulary(path: Path) -> list[str]:
    """Tokens in id order, in GPT-2's byte-to-unicode spelling (as CTranslate2 stores them)."""
    if path.suffix == ".json":
        return list(json.loads(path.read_text(encoding="utf-8")))
    return path.read_text(encoding="utf-8").split("\n")[:-1]
