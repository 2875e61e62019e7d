"""One job message to one Outcome: the whole per-message policy, with no broker code in it.

The consumer calls `JobHandler.handle` on a job thread and carries out the returned Outcome
on the connection's thread (publish the result, then ack; or dead-letter; or requeue).
Errors are caught here and only here (per message): permanent ones become a failed result
plus a dead-lettered job, transient ones a retry with backoff until the delivery limit.
"""

import dataclasses
import functools
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from loguru import logger

from worker.egress import PUBLIC_ONLY, EgressPolicy, NameNotResolved, redact_text
from worker.engine.transcriber import Segment
from worker.errors import (
    CallbackFailed,
    InputNotAllowed,
    InvalidJob,
    PermanentError,
    QuotaExceeded,
    TransientError,
    WorkerError,
)
from worker.files import write_atomically
from worker.formats import render
from worker.messages import (
    ErrorInfo,
    Job,
    ProgressEvent,
    Result,
    Timings,
    job_id_of,
    parse_job,
    valid_job_id,
)
from worker.pipeline import (
    KnownVoice,
    Lane,
    Prepared,
    Processor,
    Progress,
    ProgressCallback,
    Transcript,
    segment_out,
)
from worker.service.asked import as_asked, diarization_of, vad_choice
from worker.service.callbacks import WebhookSigner, post_callback
from worker.service.inputs import Sources

RESULT_MARKER = "result.json"
MAX_UNPUBLISHED = 64  # results kept for redeliveries after a lost publish (oldest dropped first)

ProgressSink = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class Delivery:
    """What the handler needs of a broker message."""

    body: bytes
    attempt: int = 1
    published_at: float | None = None
    message_id: str | None = None  # the AMQP message id: names the failed result of an unreadable body
    lane: Lane = "bulk"  # the queue it came from: interactive jobs go before bulk ones (worker/pipeline/lanes.py)


@dataclass(frozen=True)
class Outcome:
    """What the connection thread must do with the message."""

    action: Literal["complete", "dead_letter", "retry", "ack"]
    result: Result | None = None
    retry_delay: float = 0.0

    @property
    def error(self) -> ErrorInfo | None:
        return self.result.error if self.result else None


@dataclass(frozen=True)
class HandlerOptions:
    input_dir: Path
    output_dir: Path
    work_dir: Path | None = None  # scratch for downloads; None: the system's temp directory
    egress: EgressPolicy = PUBLIC_ONLY  # what audio and callback URLs may reach (worker/egress/)
    delivery_limit: int = 5
    max_download_bytes: int = 500 * 2**20
    download_timeout_seconds: float = 30.0
    callback_timeout_seconds: float = 10.0
    callback_retries: int = 3
    signer: WebhookSigner | None = None  # WEBHOOK_SECRET: callbacks signed as Standard Webhooks
    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 60.0


class Scatter(Protocol):
    """Fan-out (worker/service/fanout.py): a long job's chunks transcribed across the workers."""

    def wanted(self, prepared: Prepared) -> bool: ...

    def run(
        self, job: Job, prepared: Prepared, processor: Processor, progress: ProgressCallback | None
    ) -> list[list[Segment]]: ...


class JobHandler:
    """Runs jobs: fetch input, transcribe, write outputs, call back; returns an Outcome."""

    def __init__(
        self,
        processor_for: Callable[[str | None], Processor],
        options: HandlerOptions,
        *,
        scatter: Scatter | None = None,
    ) -> None:
        self._processor_for = processor_for
        self.options = options
        self._scatter = scatter
        # Completed results whose publish did not happen (the connection dropped first, or
        # settling failed): the redelivered job is answered from here, not transcribed again.
        self._unpublished: dict[str, Result] = {}
        # Jobs being processed now: a redelivery of one (its channel was closed under it) waits for
        # that run's result instead of transcribing the same audio a second time.
        self._running: dict[str, threading.Event] = {}
        self._unpublished_lock = threading.Lock()

    def handle(self, delivery: Delivery, progress: ProgressSink = lambda event: None) -> Outcome:
        """Never raises for a job's own failure; every path returns an Outcome."""
        try:
            job = parse_job(delivery.body)
        except InvalidJob as exc:
            job_id = job_id_of(delivery.body) or valid_job_id(delivery.message_id) or "unknown"
            with logger.contextualize(job_id=job_id):
                logger.info("Rejected job: {}", exc)
                return Outcome("dead_letter", _failed(job_id, exc, delivery))
        with logger.contextualize(job_id=job.job_id):
            return self._handle_job(job, delivery, progress)

    def _handle_job(self, job: Job, delivery: Delivery, progress: ProgressSink) -> Outcome:
        if self.already_completed(job.job_id):
            logger.info("Job {} already has a published result; not transcribing it again", job.job_id)
            return Outcome("ack")
        with self._unpublished_lock:
            waiting = self._unpublished.get(job.job_id)
            running = self._running.get(job.job_id)
            if waiting is None and running is None:
                self._running[job.job_id] = threading.Event()
        if waiting is not None:
            logger.info("Job {} was transcribed, but its result was never published; publishing it now", job.job_id)
            return Outcome("complete", waiting.model_copy(update={"attempt": delivery.attempt}))
        if running is not None:
            logger.info("Job {} is still being processed from an earlier delivery; waiting for that run", job.job_id)
            running.wait()
            return self._handle_job(job, delivery, progress)
        try:
            return self._process(job, delivery, progress)
        finally:
            with self._unpublished_lock:
                self._running.pop(job.job_id).set()

    def _process(self, job: Job, delivery: Delivery, progress: ProgressSink) -> Outcome:
        logger.info("Processing job {} (attempt {})", job.job_id, delivery.attempt)
        try:
            result = self._run(job, delivery, _Emitter(job.job_id, progress, job.logprobs))
        except PermanentError as exc:
            logger.info("Job {} failed permanently: {}", job.job_id, exc)
            return Outcome("dead_letter", _failed(job.job_id, exc, delivery, job.tenant))
        except TransientError as exc:
            return self._retry_or_give_up(job, delivery, exc)
        except Exception as exc:  # a bug, or something unforeseen: keep the job, in the dead-letter queue
            logger.exception("Job {} failed with an unexpected error", job.job_id)
            return Outcome("dead_letter", _failed(job.job_id, exc, delivery, job.tenant))
        with self._unpublished_lock:
            self._unpublished[job.job_id] = result
            # Bounded: an entry whose redelivery went to another worker is never claimed here.
            while len(self._unpublished) > MAX_UNPUBLISHED:
                self._unpublished.pop(next(iter(self._unpublished)))
        return Outcome("complete", result)

    def _retry_or_give_up(self, job: Job, delivery: Delivery, exc: TransientError) -> Outcome:
        if delivery.attempt >= self.options.delivery_limit:
            logger.warning("Job {} failed on its last attempt ({}): {}", job.job_id, delivery.attempt, exc)
            return Outcome("dead_letter", _failed(job.job_id, exc, delivery, job.tenant))
        delay = min(
            self.options.retry_backoff_seconds * 2 ** (delivery.attempt - 1), self.options.retry_backoff_max_seconds
        )
        logger.warning("Job {} failed (attempt {}), retrying in {:.1f} s: {}", job.job_id, delivery.attempt, delay, exc)
        return Outcome("retry", _failed(job.job_id, exc, delivery, job.tenant), retry_delay=delay)

    def _run(self, job: Job, delivery: Delivery, emit: "_Emitter") -> Result:
        started = time.time()
        self._check_urls(job)
        processor = self._processor_for(job.model)
        if not processor.transcriber.multilingual and (
            job.language not in (None, "en") or (job.languages and "en" not in job.languages)
        ):
            wanted = job.language or ", ".join(job.languages)
            raise InvalidJob(f"model {processor.model_name} is English-only; it cannot transcribe {wanted!r}")
        with tempfile.TemporaryDirectory(prefix=f"input-{job.job_id}-", dir=self.options.work_dir) as scratch:
            download_started = time.perf_counter()
            if job.audio.url is not None:
                emit("downloading")
            audio = self._sources.fetch(job.audio, Path(scratch) / "input")
            known = self._sources.known_voices(job, Path(scratch))
            download_seconds = time.perf_counter() - download_started
            emit("decoding")
            with processor.lanes.job(delivery.lane):
                transcript = self._transcribe(job, audio, known, processor, Path(scratch), delivery.lane, emit)
        shown = as_asked(job, transcript)
        outputs = self._write_outputs(job, transcript, shown.document())
        timings = Timings(
            queue_wait_seconds=max(0.0, started - delivery.published_at) if delivery.published_at else None,
            download_seconds=round(download_seconds, 3),
            decode_seconds=round(transcript.decode_seconds, 3),
            transcribe_seconds=round(transcript.transcribe_seconds, 3),
            total_seconds=round(time.time() - started, 3),
            real_time_factor=round(transcript.real_time_factor, 4),
        )
        result = _completed(job, shown, outputs, timings, delivery.attempt)
        if job.callback_url is not None:
            result = self._call_back(str(job.callback_url), result)
        return result

    def _transcribe(
        self,
        job: Job,
        audio: Path,
        known: tuple[KnownVoice, ...],
        processor: Processor,
        scratch: Path,
        lane: Lane,
        emit: "_Emitter",
    ) -> Transcript:
        """Decode, split and transcribe: here, or across the workers (fan-out; bulk jobs only: an
        interactive one would wait behind the bulk chunk tasks on the shared chunk queue)."""
        prepared = processor.prepare(
            audio,
            scratch,
            language=job.language,
            languages=job.languages,
            vad=vad_choice(job, processor),
            diarization=diarization_of(job, known),
        )
        _check_quota(job, prepared.duration_seconds)
        on_chunk: ProgressCallback = functools.partial(emit, "transcribing")
        if lane == "bulk" and self._scatter is not None and self._scatter.wanted(prepared):
            per_chunk = self._scatter.run(job, prepared, processor, on_chunk)
        else:
            per_chunk = processor.transcribe_chunks(
                prepared,
                job.task,
                on_chunk,
                scratch,
                prompt=job.decoder_prompt,
                temperature=job.temperature,
                word_timestamps=job.needs_word_times,
                lane=lane,
            )
        return processor.assemble(prepared, per_chunk)

    @property
    def _sources(self) -> Sources:
        o = self.options
        return Sources(o.input_dir, o.egress, o.max_download_bytes, o.download_timeout_seconds)

    def _check_urls(self, job: Job) -> None:
        """Reject a URL the worker may not contact before any work or connection (InputNotAllowed).

        A host that does not resolve now is left to the request itself (a transient DownloadFailed,
        or a callback warning); every request checks its URL again when it connects.
        """
        for url in (job.audio.url, *(k.audio.url for k in job.known_speakers), job.callback_url):
            if url is not None:
                try:
                    self.options.egress.resolve(str(url))
                except NameNotResolved:
                    pass

    def _call_back(self, url: str, result: Result) -> Result:
        """POST the result; a callback that stays down costs a warning, never the transcript.

        The result queue is the record of every job: it is published whatever the callback
        does, so a failed callback neither fails nor retries a finished transcription (nor does
        one the egress policy refuses now, its name having moved to a private address since the
        job was checked).
        """
        try:
            post_callback(
                url,
                result.model_dump_json(),
                retries=self.options.callback_retries,
                timeout_seconds=self.options.callback_timeout_seconds,
                egress=self.options.egress,
                signer=self.options.signer,
            )
        except (CallbackFailed, InputNotAllowed) as exc:
            logger.warning("Job {}: {}; the result is still published", result.job_id, exc)
            return result.model_copy(update={"warnings": [*result.warnings, str(exc)]})
        return result

    def _write_outputs(self, job: Job, transcript: Transcript, document: dict) -> dict[str, str]:
        """Each of the job's formats, from the transcript with its words (srt and vtt may be timed by them);
        the json format writes `document`."""
        directory = self.options.output_dir / job.job_id
        directory.mkdir(parents=True, exist_ok=True)
        outputs = {}
        for fmt in job.formats:
            text = render(
                fmt,
                text=transcript.text,
                segments=transcript.segments,
                document=document,
                subtitles=job.subtitle_options,
            )
            outputs[fmt] = str(write_atomically(directory / f"transcript.{fmt}", text))
        return outputs

    # --- idempotency: a marker written once the result is published ---

    def already_completed(self, job_id: str) -> bool:
        return (self.options.output_dir / job_id / RESULT_MARKER).is_file()

    def mark_published(self, result: Result) -> None:
        """Called by the consumer after the broker confirmed a completed result.

        Never raises: the result is already published, so the job must be acked whatever
        happens here. Without the marker (a full disk, say) a redelivery would only be
        transcribed again, which costs time, never a job.
        """
        with self._unpublished_lock:
            self._unpublished.pop(result.job_id, None)
        directory = self.options.output_dir / result.job_id
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomically(directory / RESULT_MARKER, result.model_dump_json(indent=2))
        except OSError as exc:
            logger.error("Job {}: result published, but its marker could not be written: {}", result.job_id, exc)


@dataclass(frozen=True)
class _Emitter:
    """Turns pipeline stages and chunk progress into ProgressEvents for one job."""

    job_id: str
    sink: ProgressSink
    logprobs: bool = False  # the job asked for them: each chunk's go with its text

    def __call__(self, stage: str, progress: Progress | None = None) -> None:
        if progress is None:
            self.sink(ProgressEvent(job_id=self.job_id, stage=stage))
            return
        self.sink(
            ProgressEvent(
                job_id=self.job_id,
                stage=stage,
                chunks_done=progress.chunks_done,
                chunks_total=progress.chunks_total,
                percent=round(progress.percent, 1),
                chunk_index=progress.chunk_index,
                text=progress.text,
                logprobs=[dataclasses.asdict(p) for p in progress.logprobs] if self.logprobs else None,
            )
        )


def error_code(exc: BaseException) -> str:
    return type(exc).__name__ if isinstance(exc, WorkerError) else "InternalError"


def error_info(exc: BaseException) -> ErrorInfo:
    """The error a failed result (or a failed chunk) carries: its code and message."""
    # redact_text: an unforeseen error's text may quote a URL with its credentials or query.
    return ErrorInfo(code=error_code(exc), message=redact_text(str(exc)) or type(exc).__name__)


def _failed(job_id: str, exc: BaseException, delivery: Delivery, tenant: str | None = None) -> Result:
    return Result(job_id=job_id, status="failed", attempt=delivery.attempt, error=error_info(exc), tenant=tenant)


def _completed(job: Job, t: Transcript, outputs: dict[str, str], timings: Timings, attempt: int) -> Result:
    return Result(
        job_id=job.job_id,
        status="completed",
        attempt=attempt,
        tenant=job.tenant,
        text=t.text,
        segments=[segment_out(s, logprobs=job.logprobs) for s in t.segments],
        language=t.language,
        language_probability=t.language_probability,
        duration_seconds=t.duration_seconds,
        model=t.model,
        chunks=t.chunks,
        outputs=outputs,
        timings=timings,
    )


def _check_quota(job: Job, seconds: float) -> None:
    """QuotaExceeded for audio longer than the job may hold (decoded, nothing transcribed yet)."""
    if job.quota_seconds is not None and seconds > job.quota_seconds:
        raise QuotaExceeded(
            f"{seconds:.1f} s of audio is more than the {job.quota_seconds:.1f} s left of today's audio quota"
        )
