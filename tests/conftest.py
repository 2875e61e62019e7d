"""Shared fixtures: real audio from ../shared/audio, real models converted from installed packages.

Tests never download: every downloader here has downloads disabled or points at a server
the test itself runs on 127.0.0.1.
"""

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from loguru import logger

from worker.devtools import local_broker
from worker.devtools.nonspeech import Sound, synthesize
from worker.engine.models import ModelDownloader
from worker.engine.transcriber import WhisperTranscriber
from worker.media.audio import decode_audio

ROOT = Path(__file__).resolve().parent.parent

# Tests connect to 127.0.0.1 only, directly: a proxy this machine's environment names for its package
# registries (HTTPS_PROXY, ...) must not carry the worker's requests in them (Settings reads these names,
# in this process and in every process the tests start).
for _name in [name for name in os.environ if name.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")]:
    del os.environ[_name]
AUDIO_DIR = ROOT.parent / "shared" / "audio"
MODELS_DIR = ROOT / "whisper" / "models"


def pytest_configure(config: pytest.Config) -> None:
    logger.remove()
    logger.configure(extra={"job_id": "-"})
    logger.add(sys.stderr, level="INFO")


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces: enough for these references' WER."""
    text = text.lower().replace("'", "")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not AUDIO_DIR.is_dir():
        pytest.fail(f"{AUDIO_DIR} is missing: tests need ../shared/audio beside the project")
    return AUDIO_DIR


def reference(audio_dir: Path, name: str) -> str:
    return (audio_dir / name).with_suffix(".txt").read_text().strip()


@pytest.fixture(scope="session")
def offline_downloader() -> ModelDownloader:
    """The project's models directory, filled only from installed packages."""
    return ModelDownloader(MODELS_DIR, download_url="")


@pytest.fixture(scope="session")
def tiny_en_path(offline_downloader: ModelDownloader) -> Path:
    return offline_downloader.ensure_model_exists("tiny.en")


@pytest.fixture(scope="session")
def base_path(offline_downloader: ModelDownloader) -> Path:
    return offline_downloader.ensure_model_exists("base")


@pytest.fixture(scope="session")
def transcriber(tiny_en_path: Path) -> WhisperTranscriber:
    """One shared transcriber for the whole session, as in the service (2 threads per call by default)."""
    return WhisperTranscriber(tiny_en_path, max_concurrent_calls=4, n_threads=2)


@pytest.fixture(scope="session")
def jfk(audio_dir: Path) -> np.ndarray:
    return decode_audio(audio_dir / "jfk_inaugural_1961.flac")


@pytest.fixture
def log_messages():
    """Collect (level, message) of every loguru record at DEBUG and above during a test."""
    records: list[tuple[str, str]] = []
    sink_id = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    yield records
    logger.remove(sink_id)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A private rabbitmq-server on 127.0.0.1 shared by the session; yields its AMQP URL.

    Its directory is not under pytest's tmp_path: that is private to root, and the server
    runs as user rabbitmq.
    """
    base = Path(tempfile.mkdtemp(prefix="worker-rabbitmq-"))
    running = local_broker.start(base)
    yield running.url
    running.stop()
    shutil.rmtree(base, ignore_errors=True)


# Non-speech at speech-like levels (worker.devtools.nonspeech: deterministic, seeded).
NON_SPEECH = ("pink", "brown", "sines", "beep", "clicks", "silence")


def non_speech(kind: str, seconds: float, tmp_dir: Path | None = None) -> np.ndarray:
    """`seconds` of one kind of non-speech, 16 kHz mono float32, at -30 dBFS (`tmp_dir`: unused, kept for callers)."""
    return synthesize(Sound(kind, seconds, dbfs=-30.0, seed=len(kind)), 16000).astype(np.float32)
