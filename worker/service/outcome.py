"""A job message in (Delivery) and what becomes of it (Outcome), with the decision for a failed job.

The connection thread carries an Outcome out (worker/service/settle.py): publish the result, then
ack; or dead-letter the job with its failed result; or requeue it for a retry; or just ack it. A
permanent error dead-letters at once; a transient one is retried with an exponential backoff until
the delivery limit, then dead-lettered too.
"""

from dataclasses import dataclass
from typing import Literal

from loguru import logger

from worker.egress import redact_text
from worker.errors import TransientError, WorkerError
from worker.messages import ErrorInfo, Job, Result
from worker.pipeline import Lane


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
class RetryPolicy:
    """How often, and how far apart, a job that failed for a transient reason is tried."""

    delivery_limit: int
    backoff_seconds: float
    backoff_max_seconds: float

    def retry_or_give_up(self, job: Job, delivery: Delivery, exc: TransientError) -> Outcome:
        """A retry after a backoff that doubles per attempt; a dead letter on the last attempt."""
        if delivery.attempt >= self.delivery_limit:
            logger.warning("Job {} failed on its last attempt ({}): {}", job.job_id, delivery.attempt, exc)
            return Outcome("dead_letter", failed(job.job_id, exc, delivery, job.tenant))
        delay = min(self.backoff_seconds * 2 ** (delivery.attempt - 1), self.backoff_max_seconds)
        logger.warning("Job {} failed (attempt {}), retrying in {:.1f} s: {}", job.job_id, delivery.attempt, delay, exc)
        return Outcome("retry", failed(job.job_id, exc, delivery, job.tenant), retry_delay=delay)


def error_code(exc: BaseException) -> str:
    return type(exc).__name__ if isinstance(exc, WorkerError) else "InternalError"


def error_info(exc: BaseException) -> ErrorInfo:
    """The error a failed result (or a failed chunk) carries: its code and message."""
    # redact_text: an unforeseen error's text may quote a URL with its credentials or query.
    return ErrorInfo(code=error_code(exc), message=redact_text(str(exc)) or type(exc).__name__)


def failed(job_id: str, exc: BaseException, delivery: Delivery, tenant: str | None = None) -> Result:
    """The failed result of a job: what the results queue (and the dead letter) say about it."""
    return Result(job_id=job_id, status="failed", attempt=delivery.attempt, error=error_info(exc), tenant=tenant)
