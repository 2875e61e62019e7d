"""Fan-out: a long job's chunks transcribed by every worker on the broker, gathered by the one that took it.

Scatter. The worker that took the job (its coordinator) has decoded and split it as in-process mode
does. It declares the job's gather queue, publishes one task per chunk on the chunk queue (the chunk's
audio as FLAC in the body, the task in the headers, the gather queue as reply_to), then a `scattered`
record on the gather queue. Any worker, the coordinator included, takes chunk tasks (ChunkHandler).

Gather. The coordinator consumes its gather queue (alone: it holds the job's lock, an exclusive queue
beside it, publisher.lock_gather), and keeps every result unacked: the
results stay on the broker until the job's result is published (the consumer then deletes the queue).
So whatever stops a coordinator (SIGKILL, a lost connection, the broker's consumer_timeout closing the
channel) costs no finished chunk: the next coordinator, on redelivery of the job, finds them on the
queue, publishes tasks only for chunks with no result (none if the `scattered` record is there and
recent), and transcribes nothing twice. Duplicate results (redelivery races) are ignored by index.

This runs on the job's thread with a connection of its own (a broker session, session.py, which
reconnects with the worker's backoff): pika connections are not thread-safe, and the consumer's
connection thread must stay free for heartbeats and settling.
"""

import threading
import time
from dataclasses import dataclass, field

import pika
import pika.exceptions
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.engine.catalog import requestable
from worker.engine.transcriber import Segment
from worker.errors import ChunkFailed, GatherTimeout
from worker.media.audio import encode_flac
from worker.messages import Job
from worker.messages.fanout import ChunkTask, GatherMessage
from worker.pipeline import Prepared, Processor, Progress, ProgressCallback, joined, segment_in, token_logprobs
from worker.service import publisher, session
from worker.service.publisher import Topology
from worker.service.session import BrokerSession, SessionOptions

# Lost connections and closed channels are resumed; anything else (a bug) fails the job at once.
_BROKER_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)
_RESOURCE_LOCKED = 405  # another coordinator of the same job holds the gather queue's lock
_BACKLOG_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class FanOutOptions:
    # Jobs with more audio than this fan out; 0 turns fan-out off.
    min_seconds: float = 600.0
    # A job fails (transient: it is retried) when no chunk result came back for this long; the gather
    # queue expires this long after its coordinator is gone.
    gather_timeout_seconds: float = 3600.0


@dataclass
class _Gathered:
    """What the coordinator knows of its job so far."""

    total: int
    results: dict[int, list[Segment]] = field(default_factory=dict)
    scattered_at: float | None = None
    failure: GatherMessage | None = None
    done_seconds: float = 0.0
    received_bytes: int = 0


class FanOut:
    """Scatters a prepared job's chunks over the broker and gathers their segments."""

    def __init__(
        self,
        *,
        url: str,
        topology: Topology,
        options: FanOutOptions,
        session_options: SessionOptions = session.DEFAULT_OPTIONS,
    ) -> None:
        self._url = url
        self._session_options = session_options
        self._topology = topology
        self.options = options
        self._never = threading.Event()  # a job's gathering ends by its result or a timeout, not a stop

    def wanted(self, prepared: Prepared) -> bool:
        """Fan out a job longer than min_seconds with more than one chunk."""
        return 0 < self.options.min_seconds < prepared.duration_seconds and len(prepared.chunks) > 1

    def run(
        self, job: Job, prepared: Prepared, processor: Processor, progress: ProgressCallback | None
    ) -> list[list[Segment]]:
        """Every chunk's segments, in chunk order. ChunkFailed, GatherTimeout."""
        job_id = job.job_id
        queue = self._topology.gather_queue(job_id)
        gathered = _Gathered(total=len(prepared.chunks))
        seen, last_news = 0, time.monotonic()
        logger.info("Fanning out {} chunks on {}", gathered.total, self._topology.chunks_queue)

        def on_error(exc: BaseException) -> str:
            """Give up when no chunk result came for gather_timeout_seconds; else say what is retried."""
            nonlocal seen, last_news
            if len(gathered.results) > seen:
                seen, last_news = len(gathered.results), time.monotonic()
            if time.monotonic() - last_news > self.options.gather_timeout_seconds:
                raise GatherTimeout(f"gathering {queue} failed for too long: {exc}") from None
            if getattr(exc, "reply_code", None) == _RESOURCE_LOCKED:
                return "Another worker is coordinating this job (it was redelivered); waiting for it"
            return f"Gathering interrupted ({exc}); resuming from the chunk results on the broker"

        broker = BrokerSession(self._url, self._session_options)
        result = broker.run(
            lambda connection: self._coordinate(
                connection, broker, queue, job, prepared, processor, progress, gathered
            ),
            stop=self._never,
            retry_on=_BROKER_ERRORS,
            on_error=on_error,
        )
        assert result is not None  # the session returns only the work's result: nothing sets _never
        return result

    def _coordinate(
        self,
        connection: pika.BlockingConnection,
        broker: BrokerSession,
        queue: str,
        job: Job,
        prepared: Prepared,
        processor: Processor,
        progress: ProgressCallback | None,
        gathered: _Gathered,
    ) -> list[list[Segment]]:
        """One connection's part of the job. Results are never acked: when the session closes the
        connection they go back to the queue, kept until the job's result is published."""
        channel = connection.channel()
        channel.confirm_delivery()
        publisher.lock_gather(channel, queue)
        backlog = publisher.declare_gather(channel, queue, expires_seconds=self.options.gather_timeout_seconds)
        inbox: list[bytes] = []
        channel.basic_consume(queue, lambda _ch, _m, _p, body: inbox.append(body))
        broker.established()
        # A previous coordinator's results (and scatter record) come first: wait for them before
        # deciding what to publish, so that no finished chunk is sent out again.
        deadline = time.monotonic() + _BACKLOG_WAIT_SECONDS
        while len(inbox) < backlog and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
        self._take(inbox, gathered, prepared, progress)
        if backlog:
            logger.info("Resuming: {} of {} chunk results already on the broker", len(gathered.results), gathered.total)
        if self._must_scatter(gathered):
            self._scatter(channel, queue, job, prepared, processor, gathered)
        return self._gather(connection, channel, inbox, gathered, prepared, progress)

    def _must_scatter(self, gathered: _Gathered) -> bool:
        if len(gathered.results) == gathered.total:
            return False
        if gathered.scattered_at is None:
            return True
        # Tasks published long ago with results still missing were lost (dead-lettered by the broker's
        # delivery limit, or purged): publish those again.
        return time.time() - gathered.scattered_at > self.options.gather_timeout_seconds

    def _scatter(
        self,
        channel: BlockingChannel,
        queue: str,
        job: Job,
        prepared: Prepared,
        processor: Processor,
        gathered: _Gathered,
    ) -> None:
        started, sent = time.perf_counter(), 0
        for chunk in prepared.chunks:
            if chunk.index in gathered.results:
                continue
            chunk_task = ChunkTask(
                job_id=job.job_id,
                index=chunk.index,
                start=chunk.start,
                end=chunk.end,
                pieces=list(chunk.pieces) or None,
                chunks_total=gathered.total,
                model=requestable(processor.model_name),  # the chunk workers load the very same file
                language=prepared.language,
                task=job.task,
                prompt=job.decoder_prompt,
                temperature=job.temperature,
                word_timestamps=job.needs_word_times,
            )
            audio = encode_flac(prepared.samples(chunk))
            publisher.publish_chunk_task(channel, self._topology, chunk_task, audio, reply_to=queue)
            sent += len(audio)
        record = GatherMessage(kind="scattered", job_id=job.job_id, chunks=gathered.total, at=time.time())
        publisher.publish_gather(channel, queue, record)
        gathered.scattered_at = record.at
        logger.info(
            "Published {} chunk tasks ({:.1f} MB of FLAC) in {:.2f} s",
            gathered.total - len(gathered.results),
            sent / 1e6,
            time.perf_counter() - started,
        )

    def _gather(
        self,
        connection: pika.BlockingConnection,
        channel: BlockingChannel,
        inbox: list[bytes],
        gathered: _Gathered,
        prepared: Prepared,
        progress: ProgressCallback | None,
    ) -> list[list[Segment]]:
        last_news = started = time.monotonic()
        while len(gathered.results) < gathered.total:
            connection.process_data_events(time_limit=0.05)
            if channel.is_closed:  # the broker's consumer_timeout on the results held here, or a queue deleted
                raise pika.exceptions.ChannelClosed(0, "the broker closed the gather channel")
            if self._take(inbox, gathered, prepared, progress):
                last_news = time.monotonic()
            if gathered.failure is not None:
                error = gathered.failure.error
                raise ChunkFailed(
                    f"chunk {gathered.failure.index} failed on {gathered.failure.worker}: "
                    f"{error.code if error else 'Unknown'}: {error.message if error else ''}"
                )
            if time.monotonic() - last_news > self.options.gather_timeout_seconds:
                raise GatherTimeout(
                    f"no chunk result for {self.options.gather_timeout_seconds:g} s "
                    f"({len(gathered.results)} of {gathered.total} back)"
                )
        logger.info(
            "Gathered {} chunk results ({:.1f} kB received) in {:.2f} s",
            gathered.total,
            gathered.received_bytes / 1e3,
            time.monotonic() - started,
        )
        return [gathered.results[i] for i in range(gathered.total)]

    @staticmethod
    def _take(inbox: list[bytes], gathered: _Gathered, prepared: Prepared, progress: ProgressCallback | None) -> bool:
        """Fold the messages received into `gathered`; True when a new chunk result came."""
        news = False
        while inbox:
            body = inbox.pop(0)
            gathered.received_bytes += len(body)
            try:
                message = GatherMessage.model_validate_json(body)
            except ValueError as exc:
                logger.error("Ignoring a malformed message on the gather queue: {}", exc)
                continue
            if message.kind == "scattered":
                gathered.scattered_at = max(gathered.scattered_at or 0.0, message.at or 0.0)
            elif message.index is None or not 0 <= message.index < gathered.total:
                logger.error("Ignoring a chunk result with index {}", message.index)
            elif message.status == "failed":
                gathered.failure = message
            elif message.index not in gathered.results:  # a duplicate (redelivery race) is ignored
                chunk = prepared.chunks[message.index]
                gathered.results[message.index] = [segment_in(s) for s in message.segments]
                gathered.done_seconds += chunk.seconds
                news = True
                logger.debug("Chunk {} back from {} ({:.2f} s)", message.index, message.worker, message.seconds)
                if progress is not None:
                    done, seconds = len(gathered.results), gathered.done_seconds
                    segments = gathered.results[message.index]
                    total, audio = gathered.total, prepared.duration_seconds
                    tokens = token_logprobs(segments)
                    progress(Progress(done, total, seconds, audio, message.index, joined(segments), tokens))
        return news
