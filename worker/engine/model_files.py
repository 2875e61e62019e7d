"""What a model file on disk is: its sidecar, its checksums, its ggml header, and how it is staged.

Every file we produce gets a sidecar `<file>.json` with its size and SHA-256, so a converted
file (whose bytes differ from the official one) validates like a downloaded one, and a
truncated file is caught by its size before hashing.
"""

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from worker.egress import redact
from worker.engine import ggml_convert
from worker.engine.catalog import ModelConfig
from worker.engine.quantize import FILE_TYPES, GGML_QNT_VERSION_FACTOR
from worker.errors import DownloadFailed
from worker.files import write_atomically

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Sidecar:
    """What we know about a model file we produced: exact size, SHA-256, and where it came from."""

    size: int
    sha256: str
    source: str

    @staticmethod
    def path_for(model_path: Path) -> Path:
        return model_path.with_name(model_path.name + ".json")

    @classmethod
    def read(cls, model_path: Path) -> "Sidecar | None":
        try:
            return cls(**json.loads(cls.path_for(model_path).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, model_path: Path) -> None:
        write_atomically(self.path_for(model_path), json.dumps(asdict(self), indent=2) + "\n")


def file_digests(path: Path) -> tuple[str, str]:
    """(SHA-1, SHA-256) of a file, read once."""
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            sha1.update(block)
            sha256.update(block)
    return sha1.hexdigest(), sha256.hexdigest()


def validation_problem(path: Path, config: ModelConfig) -> str | None:
    """Why `path` is not a valid copy of `config`'s model, or None when it is."""
    if not path.is_file():
        return "missing"
    sidecar = Sidecar.read(path)
    size = path.stat().st_size
    if sidecar is not None and sidecar.size != size:
        return f"size {size} bytes, expected {sidecar.size} (truncated or overwritten)"
    sha1, sha256 = file_digests(path)
    if sidecar is not None and sidecar.sha256 == sha256:
        return None
    if sha1 == config.sha1 or sha256 == config.sha256:
        return None
    return "checksum mismatch (corrupt, or not the file its sidecar describes)"


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` (same filesystem, so os.replace is atomic); removed
    unless the caller moved it into place."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    staging = Path(name)
    os.chmod(staging, 0o644)  # mkstemp's 0600 would hide the model from other users of a shared volume
    try:
        yield staging
    finally:
        staging.unlink(missing_ok=True)


def looks_like(path: Path, config: ModelConfig) -> bool:
    """Whether `path` is, at a glance, `config`'s file: its sidecar's size, else a ggml header of its type."""
    sidecar = Sidecar.read(path)
    if sidecar is not None:
        return sidecar.size == path.stat().st_size
    try:
        check_header(path, config, str(path))
    except DownloadFailed:
        return False
    return True


def check_header(path: Path, config: ModelConfig, url: str) -> None:
    """A download with no published checksum must at least be a ggml file of the expected type."""
    with open(path, "rb") as f:
        header = f.read(4 * 12)
    if len(header) < 48 or struct.unpack_from("<I", header)[0] != ggml_convert.GGML_MAGIC:
        raise DownloadFailed(f"{redact(url)}: not a ggml model file")
    ftype = struct.unpack_from("<i", header, 44)[0] % GGML_QNT_VERSION_FACTOR
    if ftype != FILE_TYPES.get(config.quantization):
        raise DownloadFailed(
            f"{redact(url)}: file type {ftype}, expected {config.quantization} ({FILE_TYPES.get(config.quantization)})"
        )
