"""One job message to one Outcome: the whole per-message policy, with no broker code in it.

The consumer calls `JobHandler.handle` on a job thread and carries out the returned Outcome
on the connection's thread (publish the result, then ack; or dead-letter; or requeue).
Errors are caught here and only here (per message): permanent ones become a failed result
plus a dead-lettered job, transient ones a retry with backoff until the delivery limit
(worker/service/outcome.py). The parts it composes: the input and its scratch directory
(intake.py), progress events (progress.py), the outputs, result and callback (results.py),
and redeliveries answered without transcribing again (redeliveries.py, and results.py's marker).
"""

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loguru import logger

from worker.egress import PUBLIC_ONLY, EgressPolicy
from worker.engine.transcriber import Segment
from worker.errors import InvalidJob, PermanentError, QuotaExceeded, TransientError
from worker.messages import Job, Result, job_id_of, parse_job, valid_job_id
from worker.pipeline import Lane, Prepared, Processor, ProgressCallback, Transcript
from worker.service.asked import as_asked, diarization_of, vad_choice
from worker.service.callbacks import WebhookSigner
from worker.service.inputs import Sources
from worker.service.intake import Fetched, Intake
from worker.service.outcome import Delivery, Outcome, RetryPolicy, failed
from worker.service.progress import ProgressEmitter, ProgressSink
from worker.service.redeliveries import Redeliveries
from worker.service.results import OutputDir, call_back, completed, timings_of


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
        self._redeliveries = Redeliveries()

    def handle(self, delivery: Delivery, progress: ProgressSink = lambda event: None) -> Outcome:
        """Never raises for a job's own failure; every path returns an Outcome."""
        try:
            job = parse_job(delivery.body)
        except InvalidJob as exc:
            job_id = job_id_of(delivery.body) or valid_job_id(delivery.message_id) or "unknown"
            with logger.contextualize(job_id=job_id):
                logger.info("Rejected job: {}", exc)
                return Outcome("dead_letter", failed(job_id, exc, delivery))
        with logger.contextualize(job_id=job.job_id):
            return self._handle_job(job, delivery, progress)

    def _handle_job(self, job: Job, delivery: Delivery, progress: ProgressSink) -> Outcome:
        if self.already_completed(job.job_id):
            logger.info("Job {} already has a published result; not transcribing it again", job.job_id)
            return Outcome("ack")
        waiting, running = self._redeliveries.start(job.job_id)
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
            self._redeliveries.finish(job.job_id)

    def _process(self, job: Job, delivery: Delivery, progress: ProgressSink) -> Outcome:
        logger.info("Processing job {} (attempt {})", job.job_id, delivery.attempt)
        try:
            result = self._run(job, delivery, ProgressEmitter(job.job_id, progress, job.logprobs))
        except PermanentError as exc:
            logger.info("Job {} failed permanently: {}", job.job_id, exc)
            return Outcome("dead_letter", failed(job.job_id, exc, delivery, job.tenant))
        except TransientError as exc:
            o = self.options
            policy = RetryPolicy(o.delivery_limit, o.retry_backoff_seconds, o.retry_backoff_max_seconds)
            return policy.retry_or_give_up(job, delivery, exc)
        except Exception as exc:  # a bug, or something unforeseen: keep the job, in the dead-letter queue
            logger.exception("Job {} failed with an unexpected error", job.job_id)
            return Outcome("dead_letter", failed(job.job_id, exc, delivery, job.tenant))
        self._redeliveries.keep(result)
        return Outcome("complete", result)

    def _run(self, job: Job, delivery: Delivery, emit: ProgressEmitter) -> Result:
        started = time.time()
        intake = self._intake
        intake.check_urls(job)
        processor = self._processor_for(job.model)
        _check_language(job, processor)
        with intake.fetched(job, emit) as fetched:
            emit("decoding")
            with processor.lanes.job(delivery.lane):
                transcript = self._transcribe(job, fetched, processor, delivery.lane, emit)
        shown = as_asked(job, transcript)
        outputs = OutputDir(self.options.output_dir).write(job, transcript, shown.document())
        timings = timings_of(started, delivery.published_at, fetched.download_seconds, transcript)
        result = completed(job, shown, outputs, timings, delivery.attempt)
        if job.callback_url is not None:
            o = self.options
            result = call_back(
                str(job.callback_url),
                result,
                retries=o.callback_retries,
                timeout_seconds=o.callback_timeout_seconds,
                egress=o.egress,
                signer=o.signer,
            )
        return result

    def _transcribe(
        self, job: Job, fetched: Fetched, processor: Processor, lane: Lane, emit: ProgressEmitter
    ) -> Transcript:
        """Decode, split and transcribe: here, or across the workers (fan-out; bulk jobs only: an
        interactive one would wait behind the bulk chunk tasks on the shared chunk queue)."""
        prepared = processor.prepare(
            fetched.audio,
            fetched.scratch,
            language=job.language,
            languages=job.languages,
            vad=vad_choice(job, processor),
            diarization=diarization_of(job, fetched.known),
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
                fetched.scratch,
                prompt=job.decoder_prompt,
                temperature=job.temperature,
                word_timestamps=job.needs_word_times,
                lane=lane,
            )
        return processor.assemble(prepared, per_chunk)

    @property
    def _intake(self) -> Intake:
        o = self.options
        return Intake(Sources(o.input_dir, o.egress, o.max_download_bytes, o.download_timeout_seconds), o.work_dir)

    # --- idempotency: a marker written once the result is published ---

    def already_completed(self, job_id: str) -> bool:
        return OutputDir(self.options.output_dir).has_marker(job_id)

    def mark_published(self, result: Result) -> None:
        """Called by the consumer after the broker confirmed a completed result; never raises (the job
        must be acked whatever happens here)."""
        self._redeliveries.published(result.job_id)
        OutputDir(self.options.output_dir).write_marker(result)


def _check_language(job: Job, processor: Processor) -> None:
    """InvalidJob for a job that asks an English-only model for another language."""
    if not processor.transcriber.multilingual and (
        job.language not in (None, "en") or (job.languages and "en" not in job.languages)
    ):
        wanted = job.language or ", ".join(job.languages)
        raise InvalidJob(f"model {processor.model_name} is English-only; it cannot transcribe {wanted!r}")


def _check_quota(job: Job, seconds: float) -> None:
    """QuotaExceeded for audio longer than the job may hold (decoded, nothing transcribed yet)."""
    if job.quota_seconds is not None and seconds > job.quota_seconds:
        raise QuotaExceeded(
            f"{seconds:.1f} s of audio is more than the {job.quota_seconds:.1f} s left of today's audio quota"
        )
