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
recent), and transcribes nothing twice. Duplicate results (redelivery races) are ignored by index
(gather.py folds the messages read into what the coordinator knows; nothing there touches the broker).

This runs on the job's thread with a connection of its own (a broker session, session.py, which
reconnects with the worker's backoff): pika connections are not thread-safe, and the consumer's
connection thread must stay free for heartbeats and settling.
"""

import threading
import time
from dataclasses import dataclass

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
from worker.pipeline import Prepared, Processor, ProgressCallback
from worker.service import publisher, session
from worker.service.gather import Gathered
from worker.service.publisher import Topology
from worker.service.session import BrokerSession, SessionOptions

# Lost connections, closed channels and refused publishes (pika's NackError and UnroutableError are channel
# errors) are resumed on a new connection, whose channels are new (RabbitMQ 3.10 was seen to keep refusing on
# the channel that met a quorum queue's leader election: session.PublishChannel); anything else (a bug) fails
# the job at once.
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
        coordinator = _Coordinator(self._topology, self.options, job, prepared, processor, progress)
        logger.info("Fanning out {} chunks on {}", coordinator.gathered.total, self._topology.chunks_queue)
        broker = BrokerSession(self._url, self._session_options)
        result = broker.run(
            lambda connection: coordinator.coordinate(connection, broker),
            stop=self._never,
            retry_on=_BROKER_ERRORS,
            on_error=coordinator.on_error,
        )
        assert result is not None  # the session returns only the work's result: nothing sets _never
        return result


class _Coordinator:
    """One job's coordination, across the connections its broker session makes: publish the chunk tasks
    that have no result yet, then gather the results (the state is in `gathered`, kept between connections)."""

    def __init__(
        self,
        topology: Topology,
        options: FanOutOptions,
        job: Job,
        prepared: Prepared,
        processor: Processor,
        progress: ProgressCallback | None,
    ) -> None:
        self._topology = topology
        self._options = options
        self._job = job
        self._prepared = prepared
        self._processor = processor
        self._progress = progress
        self._queue = topology.gather_queue(job.job_id)
        self.gathered = Gathered(total=len(prepared.chunks))
        self._seen, self._last_news = 0, time.monotonic()

    def on_error(self, exc: BaseException) -> str:
        """Give up when no chunk result came for gather_timeout_seconds; else say what is retried."""
        if len(self.gathered.results) > self._seen:
            self._seen, self._last_news = len(self.gathered.results), time.monotonic()
        if time.monotonic() - self._last_news > self._options.gather_timeout_seconds:
            raise GatherTimeout(f"gathering {self._queue} failed for too long: {exc}") from None
        if getattr(exc, "reply_code", None) == _RESOURCE_LOCKED:
            return "Another worker is coordinating this job (it was redelivered); waiting for it"
        return f"Gathering interrupted ({exc}); resuming from the chunk results on the broker"

    def coordinate(self, connection: pika.BlockingConnection, broker: BrokerSession) -> list[list[Segment]]:
        """One connection's part of the job. Results are never acked: when the session closes the
        connection they go back to the queue, kept until the job's result is published."""
        gathered = self.gathered
        channel = connection.channel()
        channel.confirm_delivery()
        publisher.lock_gather(channel, self._queue)
        backlog = publisher.declare_gather(channel, self._queue, expires_seconds=self._options.gather_timeout_seconds)
        inbox: list[bytes] = []
        channel.basic_consume(self._queue, lambda _ch, _m, _p, body: inbox.append(body))
        broker.established()
        # A previous coordinator's results (and scatter record) come first: wait for them before
        # deciding what to publish, so that no finished chunk is sent out again.
        deadline = time.monotonic() + _BACKLOG_WAIT_SECONDS
        while len(inbox) < backlog and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
        gathered.take(inbox, self._prepared, self._progress)
        if backlog:
            logger.info("Resuming: {} of {} chunk results already on the broker", len(gathered.results), gathered.total)
        if gathered.must_scatter(self._options.gather_timeout_seconds):
            self._scatter(channel)
        return self._gather(connection, channel, inbox)

    def _scatter(self, channel: BlockingChannel) -> None:
        job, prepared, gathered = self._job, self._prepared, self.gathered
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
                model=requestable(self._processor.model_name),  # the chunk workers load the very same file
                language=prepared.language,
                task=job.task,
                prompt=job.decoder_prompt,
                temperature=job.temperature,
                word_timestamps=job.needs_word_times,
            )
            audio = encode_flac(prepared.samples(chunk))
            publisher.publish_chunk_task(channel, self._topology, chunk_task, audio, reply_to=self._queue)
            sent += len(audio)
        record = GatherMessage(kind="scattered", job_id=job.job_id, chunks=gathered.total, at=time.time())
        publisher.publish_gather(channel, self._queue, record)
        gathered.scattered_at = record.at
        logger.info(
            "Published {} chunk tasks ({:.1f} MB of FLAC) in {:.2f} s",
            gathered.total - len(gathered.results),
            sent / 1e6,
            time.perf_counter() - started,
        )

    def _gather(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, inbox: list[bytes]
    ) -> list[list[Segment]]:
        gathered, timeout = self.gathered, self._options.gather_timeout_seconds
        last_news = started = time.monotonic()
        while len(gathered.results) < gathered.total:
            connection.process_data_events(time_limit=0.05)
            if channel.is_closed:  # the broker's consumer_timeout on the results held here, or a queue deleted
                raise pika.exceptions.ChannelClosed(0, "the broker closed the gather channel")
            if gathered.take(inbox, self._prepared, self._progress):
                last_news = time.monotonic()
            if gathered.failure is not None:
                error = gathered.failure.error
                raise ChunkFailed(
                    f"chunk {gathered.failure.index} failed on {gathered.failure.worker}: "
                    f"{error.code if error else 'Unknown'}: {error.message if error else ''}"
                )
            if time.monotonic() - last_news > timeout:
                raise GatherTimeout(
                    f"no chunk result for {timeout:g} s ({len(gathered.results)} of {gathered.total} back)"
                )
        logger.info(
            "Gathered {} chunk results ({:.1f} kB received) in {:.2f} s",
            gathered.total,
            gathered.received_bytes / 1e3,
            time.monotonic() - started,
        )
        return gathered.in_order()
