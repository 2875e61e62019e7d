"""One chunk task to one ChunkOutcome: what any worker does with a fanned-out job's chunk (no broker code).

The consumer calls `ChunkHandler.handle` on a chunk thread and carries out the outcome on the
connection's thread: send the reply to the job's gather queue, dead-letter the task if it is bad,
then ack. A chunk is never requeued by the worker: every failure becomes a failed reply (the
coordinator fails its job with a typed error), and a chunk that killed every worker that took it is
failed when its delivery count passes the limit. No loop, whatever the chunk does.
"""

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from loguru import logger

from worker.errors import ChunkFailed, InvalidChunkTask, UnknownJob, WorkerError
from worker.media.audio import decode_flac
from worker.media.chunking import Chunk
from worker.messages import ErrorInfo, valid_job_id
from worker.messages.fanout import ChunkTask, GatherMessage, parse_chunk_task
from worker.pipeline import Processor, segment_out
from worker.service.outcome import error_info

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ChunkDelivery:
    """What the chunk handler needs of a broker message."""

    body: bytes
    headers: dict | None
    reply_to: str | None
    attempt: int = 1


@dataclass(frozen=True)
class ChunkOutcome:
    """What the connection thread must do: reply (if any) to the gather queue, dead-letter or not, ack."""

    action: Literal["reply", "dead_letter", "drop"]
    job_id: str
    reply: GatherMessage | None = None
    error: ErrorInfo | None = None
    attempt: int = 1


class ChunkHandler:
    """Transcribes chunk tasks on the process's shared transcribers."""

    def __init__(
        self,
        processor_for: Callable[[str | None], Processor],
        *,
        gather_queue: Callable[[str], str],
        delivery_limit: int,
    ) -> None:
        self._processor_for = processor_for
        self._gather_queue = gather_queue  # job id -> the only reply_to a task of that job may name
        self._delivery_limit = delivery_limit

    def handle(self, delivery: ChunkDelivery, gathering: Callable[[str], bool] = lambda queue: True) -> ChunkOutcome:
        """Never raises; every path returns an outcome. `gathering(queue)`: is a coordinator's queue there?"""
        try:
            task = parse_chunk_task(delivery.headers)
            if delivery.reply_to != self._gather_queue(task.job_id):
                raise InvalidChunkTask(f"invalid chunk task: reply_to must be {self._gather_queue(task.job_id)!r}")
        except InvalidChunkTask as exc:
            job_id = valid_job_id((delivery.headers or {}).get("x-job-id")) or "unknown"
            with logger.contextualize(job_id=job_id):
                logger.error("Rejected chunk task: {}", exc)
            return ChunkOutcome("dead_letter", job_id, error=error_info(exc), attempt=delivery.attempt)
        with logger.contextualize(job_id=task.job_id):
            if not gathering(delivery.reply_to):
                # Not dead-lettered: this is what is left of a job that already ended (failed on another
                # chunk, or completed before a redelivery); dead letters of it would be noise.
                exc = UnknownJob(f"chunk {task.index}: no coordinator gathers job {task.job_id} (it ended); dropped")
                logger.warning("{}", exc)
                return ChunkOutcome("drop", task.job_id, error=error_info(exc), attempt=delivery.attempt)
            outcome = self._handle(task, delivery)
            return dataclasses.replace(outcome, attempt=delivery.attempt)

    def _handle(self, task: ChunkTask, delivery: ChunkDelivery) -> ChunkOutcome:
        if delivery.attempt > self._delivery_limit:
            exc = ChunkFailed(
                f"chunk {task.index} was delivered {delivery.attempt} times: every worker that took it "
                "stopped before finishing it"
            )
            logger.error("{}; failing its job", exc)
            return _failed(task, exc)
        started = time.perf_counter()
        try:
            samples = decode_flac(delivery.body)
            chunk = Chunk.of_pieces(task.index, task.pieces or [(task.start, task.end)])
            if samples.size != chunk.n_samples:
                raise InvalidChunkTask(
                    f"chunk {task.index}: {samples.size} samples of audio, but the task spans {chunk.n_samples}"
                )
            processor = self._processor_for(task.model)
            segments = processor.transcribe_chunk(
                samples,
                chunk,
                task.language,
                task.task,
                processor.threads_for(task.chunks_total),
                prompt=task.prompt,
                temperature=task.temperature,
                word_timestamps=task.word_timestamps,
            )
        except Exception as exc:  # typed or not, the chunk's job fails with it: never a requeue loop
            (logger.error if isinstance(exc, WorkerError) else logger.exception)("Chunk {} failed: {}", task.index, exc)
            return _failed(task, exc)
        reply = GatherMessage(
            kind="chunk",
            job_id=task.job_id,
            index=task.index,
            segments=[segment_out(s, logprobs=True) for s in segments],  # the job decides what it keeps
            worker=WORKER_NAME,
            seconds=round(time.perf_counter() - started, 3),
        )
        return ChunkOutcome("reply", task.job_id, reply=reply)


def _failed(task: ChunkTask, exc: BaseException) -> ChunkOutcome:
    error = error_info(exc)
    reply = GatherMessage(
        kind="chunk", job_id=task.job_id, index=task.index, status="failed", error=error, worker=WORKER_NAME
    )
    return ChunkOutcome("dead_letter", task.job_id, reply=reply, error=error)
