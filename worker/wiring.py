"""Settings in, objects out: the one place that turns configuration into the worker's parts.

Entry points build `Settings`, configure logging and call one of these; nothing below this module
takes `Settings` or reads the environment. The chain it builds, once per process and model:

    ModelDownloader (cached) -> model file -> WhisperTranscriber (shared) -> Processor (the pipeline)

How the process reaches other machines (the broker's topology and session, the egress policy) is
wired in worker/wiring_connections.py, and importable from here too.
"""

import dataclasses
import functools
import ipaddress
import threading
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from worker.config import EgressSettings, EngineSettings, GatewaySettings, Settings, SpeechSettings
from worker.engine.catalog import VAD_MODEL, VOICE_MODEL, allowed_names, model_names, resolve_model
from worker.engine.guard import GuardOptions
from worker.engine.models import ModelDownloader, get_model_downloader
from worker.engine.speech import SpeechDetector, SpeechDetectorUnavailable
from worker.engine.transcriber import CallSlots, DecodingOptions, WhisperTranscriber, available_cpus
from worker.engine.voices import SpeakerEncoder
from worker.errors import ModelNotAllowed, UnknownModel
from worker.media.chunking import ChunkingOptions
from worker.media.speech import VadOptions
from worker.pipeline import Lanes, PipelineOptions, Processor
from worker.service.callbacks import WebhookSigner
from worker.service.chunks import ChunkHandler, ChunkOutcome
from worker.service.consumer import Consumer
from worker.service.fanout import FanOut, FanOutOptions
from worker.service.jobs import HandlerOptions, JobHandler
from worker.service.outcome import Outcome
from worker.wiring_connections import broker_connection as broker_connection  # re-exported (cmd/enqueue)
from worker.wiring_connections import egress_policy, gateway_public_url, session_options, topology


def pipeline_options(
    settings: Settings, *, parallel: bool | None = None, workers: int | None = None
) -> PipelineOptions:
    """The pipeline's options (a CLI may override the mode and the number of workers)."""
    return PipelineOptions(
        parallel=settings.use_parallel_transcription if parallel is None else parallel,
        workers=workers or settings.max_parallel_workers,
        threads=settings.whisper_threads,
        max_audio_seconds=settings.max_audio_seconds,
        longest_first=settings.longest_chunks_first,
        chunking=ChunkingOptions(max_seconds=settings.chunk_max_seconds),
        chunker=settings.chunking,
        vad=vad_options(settings),
    )


def vad_options(settings: SpeechSettings) -> VadOptions:
    return VadOptions(
        threshold=settings.vad_threshold,
        min_speech_ms=settings.vad_min_speech_ms,
        min_silence_ms=settings.vad_min_silence_ms,
        speech_pad_ms=settings.vad_speech_pad_ms,
        level_quiet=settings.vad_level_quiet,
    )


def speech_detector(settings: Settings) -> SpeechDetector | None:
    """The process's one speech detector (its VAD model validated once, like a whisper model), or None
    when libwhisper cannot be driven through ctypes (the pool fallback): jobs then get energy chunks."""
    path = model_downloader(settings).ensure_model_exists(VAD_MODEL.name)
    try:
        return _speech_detector(path)
    except SpeechDetectorUnavailable as exc:
        logger.warning("Speech detection unavailable ({}): chunks come from the energy splitter", exc)
        return None


@functools.cache
def _speech_detector(model_path: Path) -> SpeechDetector:
    return SpeechDetector(model_path, parts=min(available_cpus(), 4))


def voice_encoder(settings: Settings) -> SpeakerEncoder:
    """The process's one speaker encoder (diarize "speakers"), made on first use: its weights (17 MB,
    from the resemblyzer wheel) validated once, like a model."""
    return _voice_encoder(model_downloader(settings).ensure_model_exists(VOICE_MODEL.name))


@functools.cache
def _voice_encoder(model_path: Path) -> SpeakerEncoder:
    return SpeakerEncoder(model_path)


def model_downloader(settings: Settings) -> ModelDownloader:
    """The process-wide ModelDownloader for these settings."""
    return get_model_downloader(
        settings.whisper_models_dir,
        download_url=settings.whisper_download_url,
        timeout_seconds=settings.whisper_download_timeout_seconds,
        egress=egress_policy(settings),
    )


def allowed_models(settings: Settings) -> tuple[str, ...]:
    """The model names a job may give (and the gateway lists), sorted; computed once per process.

    ALLOWED_MODELS "*": every name in the model table. A comma-separated list: those names and
    WHISPER_MODEL (UnknownModel for a name not in the table: a start-up error). Empty (the default):
    WHISPER_MODEL and its variants, plus what this worker provides offline: the models of installed
    packages and the model files in WHISPER_MODELS_DIR at the first call (a glance, no hashing; a
    file added later needs ALLOWED_MODELS or a restart). A resolved name (tiny.en -> tiny.en-q8_0)
    is allowed with its name.
    """
    return _allowed_models(settings.allowed_models, settings.whisper_model, model_downloader(settings))


@functools.cache
def _allowed_models(spec: str, default: str, downloader: ModelDownloader) -> tuple[str, ...]:
    listed = any(n.strip() for n in spec.split(","))
    offline = () if listed else downloader.offline_names()  # the files present, looked at once, here
    names = allowed_names(spec, default=default, offline=offline)
    logger.info("Jobs may use models: {}", ", ".join(names))
    return names


def processor(
    settings: Settings,
    model: str,
    options: PipelineOptions,
    *,
    concurrent_calls: int | None = None,
    calls: CallSlots | None = None,
    work_root: Path | None = None,
    lanes: Lanes | None = None,
) -> Processor:
    """Model file -> one shared transcriber -> a pipeline over it.

    `concurrent_calls` sizes the transcriber's state pools (default: what `options` runs at once);
    `calls`, the process's bound on whisper calls at once (default: one of `concurrent_calls` for
    this transcriber alone). UnknownModel / ModelUnavailable when the model cannot be provided.
    """
    name, path = model_downloader(settings).provide(model)
    transcriber = WhisperTranscriber(
        path,
        max_concurrent_calls=concurrent_calls or options.concurrent_calls,
        beam_size=settings.whisper_beam_size,
        decoding=decoding_options(settings),
        calls=calls,
        guard=guard_options(settings),
        batch_size=settings.whisper_batch_size,
        engine_threads=settings.whisper_threads or None,
    )
    # Every processor gets the detector, whatever the default chunker: a job may ask for VAD.
    speech = speech_detector(settings)
    if speech is None:
        options = dataclasses.replace(options, chunker="energy")
    return Processor(
        transcriber,
        model_name=name,
        options=options,
        work_root=work_root,
        speech=speech,
        voices=functools.partial(voice_encoder, settings),
        lanes=lanes,
    )


def decoding_options(settings: EngineSettings) -> DecodingOptions:
    return DecodingOptions(
        fit_audio_ctx=settings.whisper_fit_audio_ctx,
        audio_ctx_margin=settings.whisper_audio_ctx_margin,
        temperature_fallback=settings.whisper_temperature_fallback,
        no_timestamps=settings.whisper_no_timestamps,
    )


def guard_options(settings: EngineSettings) -> GuardOptions:
    """The hallucination guard's rules: each one on when HALLUCINATION_GUARD and its own switch are."""
    on = settings.hallucination_guard
    return GuardOptions(
        retry=on and settings.guard_retry,
        drop_no_speech=on and settings.guard_drop_no_speech,
        strip_nonspeech=on and settings.guard_strip_nonspeech,
    )


class Processors:
    """One Processor (and so one WhisperTranscriber) per model, created on first use, per process.

    A model a job may not use (`allowed_models`) is refused before anything is downloaded or
    converted. A model being provided holds back only the jobs and chunk tasks for that model. All
    the transcribers share one bound on whisper calls at once (`calls`, `whisper_calls` of them).
    """

    def __init__(self, settings: Settings, work_dir: Path) -> None:
        self._settings = settings
        self._work_dir = work_dir
        # Each of the jobs that run at once gets an equal share of the CPUs.
        self._options = dataclasses.replace(
            pipeline_options(settings), cpus=max(1, available_cpus() // settings.concurrent_jobs)
        )
        self.allowed = frozenset(allowed_models(settings))
        self.calls = CallSlots(self.whisper_calls)
        self.lanes = Lanes(settings.lane_bulk_max_wait_seconds)  # every model's calls in one order
        self._by_model: dict[str, Processor] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @property
    def whisper_calls(self) -> int:
        """Whisper calls this process runs at once, jobs and chunk tasks of every model together
        (MAX_PARALLEL_WORKERS, or 1 when not parallel, x CONCURRENT_JOBS): also its chunk task slots."""
        return self._options.concurrent_calls * self._settings.concurrent_jobs

    @property
    def chunk_slots(self) -> int:
        """Chunk tasks this process takes at once: its whisper calls, or the default model's batch when its
        transcriber decodes in batches (the tasks it holds are decoded together)."""
        return max(self.whisper_calls, self(None).transcriber.in_flight * self._settings.concurrent_jobs)

    def __call__(self, model: str | None) -> Processor:
        name = model or self._settings.whisper_model
        self._check(name)
        key = resolve_model(name)  # "tiny.en" and its default variant share one transcriber
        with self._guard:
            if (found := self._by_model.get(key)) is not None:
                return found
            lock = self._model_locks.setdefault(key, threading.Lock())
        with lock:  # only this model's callers wait while it is downloaded, converted or loaded
            with self._guard:
                found = self._by_model.get(key)
            if found is None:
                found = processor(
                    self._settings,
                    name,
                    self._options,
                    concurrent_calls=self.whisper_calls,
                    calls=self.calls,
                    work_root=self._work_dir,
                    lanes=self.lanes,
                )
                with self._guard:
                    self._by_model[key] = found
            return found

    def _check(self, name: str) -> None:
        if name in self.allowed:
            return
        allowed = ", ".join(sorted(self.allowed))
        if name not in model_names():
            raise UnknownModel(f"Unknown model {name!r}; this worker allows: {allowed}")
        raise ModelNotAllowed(
            f"Model {name!r} is not allowed on this worker; allowed: {allowed} "
            '(the operator allows more with ALLOWED_MODELS: a comma-separated list, or "*" for every model)'
        )


def webhook_signer(settings: EgressSettings) -> WebhookSigner | None:
    """The callbacks' signer (WEBHOOK_SECRET); a malformed secret stops the start-up (ValueError)."""
    secret = settings.webhook_secret.get_secret_value()
    if not secret:
        logger.warning(
            "WEBHOOK_SECRET is not set: callbacks are not signed, and receivers cannot tell them from forgeries"
        )
        return None
    try:
        return WebhookSigner.from_secret(secret)
    except ValueError as exc:
        raise ValueError(f"WEBHOOK_SECRET: {exc}") from None


def handler_options(settings: Settings, work_dir: Path) -> HandlerOptions:
    return HandlerOptions(
        input_dir=settings.input_dir,
        output_dir=settings.output_dir,
        work_dir=work_dir,
        egress=egress_policy(settings),
        delivery_limit=settings.delivery_limit,
        max_download_bytes=settings.max_download_bytes,
        download_timeout_seconds=settings.download_timeout_seconds,
        callback_timeout_seconds=settings.callback_timeout_seconds,
        callback_retries=settings.callback_retries,
        signer=webhook_signer(settings),
        retry_backoff_seconds=settings.retry_backoff_seconds,
        retry_backoff_max_seconds=settings.retry_backoff_max_seconds,
    )


def fanout(settings: Settings) -> FanOut | None:
    """The coordinator's side of fan-out, or None when FANOUT_MIN_SECONDS is 0."""
    t = topology(settings)
    if t.chunks_queue is None:
        return None
    return FanOut(
        url=settings.amqp_url.get_secret_value(),
        topology=t,
        options=FanOutOptions(
            min_seconds=settings.fanout_min_seconds, gather_timeout_seconds=settings.fanout_gather_timeout_seconds
        ),
        session_options=session_options(settings),
    )


def consumer(
    settings: Settings,
    work_dir: Path,
    *,
    on_settled: Callable[[Outcome], None],
    on_chunk_settled: Callable[[ChunkOutcome], None] = lambda outcome: None,
) -> Consumer:
    """The worker service; the default model is loaded first, so a broken model fails at start-up."""
    processors = Processors(settings, work_dir)
    processors(None)
    t = topology(settings)
    chunks = ChunkHandler(processors, gather_queue=t.gather_queue, delivery_limit=settings.delivery_limit)
    return Consumer(
        url=settings.amqp_url.get_secret_value(),
        topology=t,
        handler=JobHandler(processors, handler_options(settings, work_dir), scatter=fanout(settings)),
        concurrent_jobs=settings.concurrent_jobs,
        interactive_jobs=settings.interactive_jobs,
        session_options=session_options(settings),
        on_settled=on_settled,
        chunk_handler=chunks,
        chunk_slots=processors.chunk_slots,
        on_chunk_settled=on_chunk_settled,
    )


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gateway_keys(settings: GatewaySettings):
    """The gateway's tenants (GATEWAY_API_KEYS, GATEWAY_KEYS_FILE), watched for changes; ValueError for a
    keys file that breaks the format, or an open gateway reachable from other machines."""
    from worker.gateway.tenants import Tenants

    listed = frozenset(k.strip() for k in settings.gateway_api_keys.get_secret_value().split(",") if k.strip())
    keys = Tenants(listed, Path(settings.gateway_keys_file) if settings.gateway_keys_file else None)
    if not keys and not _loopback(settings.gateway_host) and not settings.gateway_allow_anonymous:
        raise ValueError(
            f"GATEWAY_HOST={settings.gateway_host} is reachable from other machines but GATEWAY_API_KEYS is empty "
            "and no GATEWAY_KEYS_FILE names a tenant: "
            "set API keys (or GATEWAY_ALLOW_ANONYMOUS=true to serve anyone, e.g. behind an authenticating proxy)"
        )
    keys.watch(settings.gateway_keys_reload_seconds)
    return keys


def gateway(settings: Settings, keys=None):
    """The HTTP gateway's ASGI app (FastAPI behind the upload size limit); `keys`: gateway_keys(settings)."""
    # Imported here: the worker's entry points need none of the web stack.
    from worker.gateway.app import GatewayOptions, create_app
    from worker.gateway.store import JobStore
    from worker.gateway.uploads import UploadStore

    keys = keys if keys is not None else gateway_keys(settings)
    options = GatewayOptions(
        public_url=gateway_public_url(settings),
        default_model=settings.whisper_model,
        models=allowed_models(settings),
        keys=keys,
        max_upload_bytes=settings.gateway_max_upload_bytes,
        result_timeout_seconds=settings.gateway_result_timeout_seconds,
        publish_timeout_seconds=settings.gateway_publish_timeout_seconds,
        body_idle_seconds=settings.gateway_body_idle_seconds,
        egress=egress_policy(settings),
    )
    uploads = UploadStore(settings.gateway_upload_dir, ttl_seconds=settings.gateway_upload_ttl_seconds)
    uploads.sweep()
    database = settings.gateway_database_url
    if database.startswith("sqlite:///"):
        Path(database.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return create_app(
        options,
        broker_url=settings.amqp_url.get_secret_value(),
        topology=topology(settings),
        uploads=uploads,
        store=JobStore(database),
        async_results_queue=settings.gateway_results_queue,
        broker_options=session_options(settings),
    )
