"""Runtime configuration, read from the environment (and `.env`) once, in the entry points.

Nothing else in `worker/` reads the environment: entry points build one `Settings` and pass
it (or the values it holds) down. Tests build `Settings(...)` directly.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DOWNLOAD_URL = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main"


class Settings(BaseSettings):
    """Every setting of the worker; environment names are the upper-cased field names."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # Names kept from the existing deployments.
    use_parallel_transcription: bool = True
    max_parallel_workers: int = Field(default=2, ge=1, le=64)
    whisper_models_dir: Path = Path("whisper/models")
    whisper_model: str = "tiny.en"

    # Threads per whisper call; 0 picks cpu_count // concurrent calls (at least 1).
    whisper_threads: int = Field(default=0, ge=0)
    # 1 = greedy decoding (fastest); >1 = beam search with that many beams.
    whisper_beam_size: int = Field(default=1, ge=1, le=16)
    # Base URL that serves ggml-<name>.bin; empty disables downloading entirely.
    whisper_download_url: str = DEFAULT_DOWNLOAD_URL
    whisper_download_timeout_seconds: float = Field(default=30.0, gt=0)

