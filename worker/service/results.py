"""A finished job's results: its files in OUTPUT_DIR/<job_id>/, its completed Result, its callback.

The directory holds the transcript in each of the job's formats and, once the broker confirmed the
job's result, the result marker: a redelivery of a job with a marker is acked, not run again.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from worker.egress import EgressPolicy
from worker.errors import CallbackFailed, InputNotAllowed
from worker.files import write_atomically
from worker.formats import render
from worker.messages import Job, Result, Timings
from worker.pipeline import Transcript, segment_out
from worker.service.callbacks import WebhookSigner, post_callback

RESULT_MARKER = "result.json"


@dataclass(frozen=True)
class OutputDir:
    """OUTPUT_DIR: one directory per job, with its transcripts and its result marker."""

    root: Path

    def write(self, job: Job, transcript: Transcript, document: dict) -> dict[str, str]:
        """Each of the job's formats, from the transcript with its words (srt and vtt may be timed by them);
        the json format writes `document`. Returns the path of each, by format."""
        directory = self.root / job.job_id
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

    def has_marker(self, job_id: str) -> bool:
        return (self.root / job_id / RESULT_MARKER).is_file()

    def write_marker(self, result: Result) -> None:
        """Never raises: the result is already published, so the job must be acked whatever
        happens here. Without the marker (a full disk, say) a redelivery would only be
        transcribed again, which costs time, never a job.
        """
        directory = self.root / result.job_id
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomically(directory / RESULT_MARKER, result.model_dump_json(indent=2))
        except OSError as exc:
            logger.error("Job {}: result published, but its marker could not be written: {}", result.job_id, exc)


def timings_of(started: float, published_at: float | None, download_seconds: float, t: Transcript) -> Timings:
    """Where a job's time went; `started` and `published_at` are wall-clock times, now is its end."""
    return Timings(
        queue_wait_seconds=max(0.0, started - published_at) if published_at else None,
        download_seconds=round(download_seconds, 3),
        decode_seconds=round(t.decode_seconds, 3),
        transcribe_seconds=round(t.transcribe_seconds, 3),
        total_seconds=round(time.time() - started, 3),
        real_time_factor=round(t.real_time_factor, 4),
    )


def completed(job: Job, t: Transcript, outputs: dict[str, str], timings: Timings, attempt: int) -> Result:
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


def call_back(
    url: str,
    result: Result,
    *,
    retries: int,
    timeout_seconds: float,
    egress: EgressPolicy,
    signer: WebhookSigner | None,
) -> Result:
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
            retries=retries,
            timeout_seconds=timeout_seconds,
            egress=egress,
            signer=signer,
        )
    except (CallbackFailed, InputNotAllowed) as exc:
        logger.warning("Job {}: {}; the result is still published", result.job_id, exc)
        return result.model_copy(update={"warnings": [*result.warnings, str(exc)]})
    return result
