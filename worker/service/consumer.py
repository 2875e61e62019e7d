"""Consume transcription jobs from RabbitMQ without ever losing one.

Thread model (the reason for this module's shape):
- The thread that calls `Consumer.run()` owns the pika BlockingConnection and its channel. It
  spends its life in `process_data_events`, which keeps heartbeats flowing however long a job
  takes, and it is the only thread that acks, nacks or publishes: pika channels are not
  thread-safe.
- Jobs run on a ThreadPoolExecutor of `concurrent_jobs` threads. A finished job hands its
  Outcome back with `connection.add_callback_threadsafe`; the connection thread then publishes
  the result (waiting for the broker's confirm) and only then acks. Progress events travel the
  same way.
- `basic_qos(prefetch_count=concurrent_jobs)`: the broker never hands this worker more jobs
  than it is running, so other workers get the rest.
- The connection is the broker session's (session.py): if it drops, unacked jobs go back to the
  queue (the broker does that) and the session reconnects with capped, jittered backoff.
- If the broker closes a channel (a delivery held past its `consumer_timeout`), that channel alone
  is replaced. If it cancels a consumer (the queue was deleted, or moved on failover), the worker
  says so, drops the connection and connects, declares and subscribes again. A job still running
  from the old channel finishes; its result is kept and published when the broker redelivers the
  job (JobHandler), not computed again.
- A queue deleted and declared again at once cancels nobody: the broker keeps a ghost of the
  consumer that swallows deliveries. Every `consumer_check_seconds`, while a consumer holds no
  delivery, it is probed (session.probe_consumer) and, when the broker had lost it, subscribed
  again on a new channel.
- `connected` is set only while consuming: /healthz answers 503 otherwise.
- Fan-out (when the topology has a chunk queue): a second channel consumes chunk tasks onto a pool
  of `chunk_slots` threads (the process's whisper states); their replies go to the job's gather
  queue, then the task is acked. Chunk tasks come before new jobs: while this worker holds any, its
  jobs consumer is cancelled, so a job already started (fanned out) finishes before new ones begin
  here; it subscribes again a second after the last chunk task settles.
- The interactive lane (when the topology has its queue): a third channel consumes it onto threads of
  its own (`interactive_jobs`), never paused for chunk tasks, its priority lower while this worker
  runs bulk work (lane.py); such a job's whisper calls go before the bulk ones (pipeline/lanes.py).
- `stop()` (first SIGTERM/SIGINT): cancel consumption, let the jobs in flight finish and settle,
  then close. `abort()` (second signal): close at once; unacked jobs are requeued by the broker.
"""

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pika
import pika.exceptions
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.messages import ProgressEvent
from worker.pipeline import Lane
from worker.service import publisher, session
from worker.service.chunks import ChunkDelivery, ChunkHandler, ChunkOutcome
from worker.service.jobs import Delivery, JobHandler, Outcome
from worker.service.lane import InteractiveConsumer
from worker.service.publisher import Topology
from worker.service.session import BrokerSession, SessionOptions
from worker.service.settle import CONNECTION_ERRORS, Handoffs, Settler

# Subscribe to jobs again only once no chunk task has been held for this long.
_CHUNK_QUIET_SECONDS = 1.0
_DEPTH_EVERY_SECONDS = 5.0
# A delivery whose callback failed (a bug: say an unreadable header) goes back to the queue this much
# later; the queue's delivery limit bounds the retries.
_REQUEUE_DELAY_SECONDS = 5.0


def _published_at(headers: dict, timestamp: int | None) -> float | None:
    """When the job was published: the exact header if the publisher set it, else the AMQP timestamp."""
    exact_ms = headers.get("x-published-at-ms")
    if isinstance(exact_ms, int):
        return exact_ms / 1000.0
    return float(timestamp) if timestamp else None


class _NotConsuming(session.ReconnectNow):
    """The broker closed our channel or cancelled our consumer; the connection is still up."""


def _delivery_attempt(headers: dict) -> int:
    return int(headers.get("x-delivery-count") or 0) + 1


class Consumer:
    """Pulls jobs, runs them on a pool, settles them on the connection thread."""

    def __init__(
        self,
        *,
        url: str,
        topology: Topology,
        handler: JobHandler,
        concurrent_jobs: int = 1,
        session_options: SessionOptions = session.DEFAULT_OPTIONS,
        heartbeat_seconds: int | None = None,  # shorthand: session_options with this heartbeat
        on_settled: Callable[[Outcome], None] = lambda outcome: None,
        chunk_handler: ChunkHandler | None = None,
        chunk_slots: int = 1,
        on_chunk_settled: Callable[[ChunkOutcome], None] = lambda outcome: None,
        interactive_jobs: int = 1,
    ) -> None:
        if heartbeat_seconds is not None:
            session_options = dataclasses.replace(session_options, heartbeat_seconds=heartbeat_seconds)
        self._session = BrokerSession(url, session_options)
        self._topology = topology
        self._handler = handler
        self._concurrent_jobs = concurrent_jobs
        self._settler = Settler(
            topology,
            handler,
            on_settled=on_settled,
            on_chunk_settled=on_chunk_settled,
            requeue_delay=_REQUEUE_DELAY_SECONDS,
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrent_jobs, thread_name_prefix="job")
        # The interactive lane (lane.py): its own consumer and job threads, beside the jobs queue's.
        queue = topology.interactive_queue
        self._lane = (
            InteractiveConsumer(queue, interactive_jobs, requeue_delay=_REQUEUE_DELAY_SECONDS) if queue else None
        )
        self._lane_pool = ThreadPoolExecutor(max_workers=interactive_jobs, thread_name_prefix="interactive-job")
        self._chunk_handler = chunk_handler if topology.chunks_queue else None
        self._chunk_slots = chunk_slots
        self._chunk_pool = ThreadPoolExecutor(max_workers=chunk_slots, thread_name_prefix="chunk-task")
        self._chunks_in_flight = 0
        self._last_chunk = 0.0
        self._probe: BlockingChannel | None = None
        self._jobs_channel: BlockingChannel | None = None
        self._jobs_tag: str | None = None  # None while the jobs consumer is paused for chunk tasks
        self._depth_at = 0.0
        self._checked_at = 0.0
        self._delivered_at = 0.0  # the last job delivery
        self.queue_depths: dict[str, int] = {}  # ready messages per queue, sampled every few seconds
        self._stopping = threading.Event()
        self._in_flight = 0
        self._handoffs = Handoffs()  # settlements handed to the connection's thread, not yet run
        self._count_lock = threading.Lock()  # job threads decrement too, when a connection was lost
        self.connected = threading.Event()

    # --- lifecycle ---

    @property
    def connections(self) -> int:
        """Successful connects since start; more than 1 means it reconnected."""
        return self._session.connects

    def run(self) -> None:
        """Consume until stop(); the session reconnects with backoff when the broker is down or drops us."""
        self._session.run(self._consume, stop=self._stopping, on_lost=self._lost)
        self._pool.shutdown(wait=True)
        self._lane_pool.shutdown(wait=True)
        self._chunk_pool.shutdown(wait=True)
        logger.info("Consumer stopped")

    def _lost(self) -> None:
        self.connected.clear()
        if dropped := self._handoffs.lost():
            logger.warning("The connection ended before {} finished delivery(ies) settled; the broker redelivers them",
                           dropped)  # fmt: skip

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Graceful: stop taking jobs, finish the ones in flight, then close."""
        self._stopping.set()  # first: a signal handler that interrupts the log call must see it
        logger.info("Stopping: no new jobs; finishing {} in flight", self._in_flight)

    # --- connection thread ---

    def _consume(self, connection: pika.BlockingConnection) -> None:
        """The work of one connection (the session opens and closes it)."""
        self._probe = None
        cancelled = threading.Event()
        declare = connection.channel()
        publisher.declare(declare, self._topology)
        declare.close()
        self._open_jobs_channel(connection, cancelled)
        if self._lane is not None:
            self._lane.open(connection, cancelled, functools.partial(self._on_message, connection, "interactive"))
        chunks = self._subscribe_chunks(connection, cancelled)
        self._subscribe_jobs(connection)
        self._checked_at = time.monotonic()
        self.connected.set()
        self._session.established()
        logger.info("Consuming {} ({} job(s) at a time)", self._topology.jobs_queue, self._concurrent_jobs)
        while not self._stopping.is_set():
            connection.process_data_events(time_limit=1)
            self._check_cancelled(cancelled)
            if self._jobs_channel.is_closed:
                self._reopen_jobs_channel(connection, cancelled)
            if chunks is not None and chunks.is_closed:
                chunks = self._reopen_chunks_channel(connection, cancelled, chunks)
            self._resume_jobs(connection)
            self._tend_lane(connection, cancelled)
            chunks = self._check_consumers(connection, cancelled, chunks)
            self._sample_depths(connection)
        self._pause_jobs()
        if self._lane is not None:
            self._lane.stop()
        if chunks is not None:
            chunks.basic_cancel(self._topology.chunks_queue)
        while self._in_flight or self._chunks_in_flight:  # heartbeats and settlements while work finishes
            connection.process_data_events(time_limit=1)

    def _open_jobs_channel(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> BlockingChannel:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=self._concurrent_jobs)
        channel.add_on_cancel_callback(lambda _frame: cancelled.set())
        self._jobs_channel, self._jobs_tag = channel, None
        return channel

    def _reopen_jobs_channel(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> None:
        """The broker closed the jobs channel (a job held past its consumer_timeout): open another and
        take jobs again (_resume_jobs subscribes). Only that channel goes: chunk tasks running on theirs
        carry on, which a whole new connection would cut off (and a chunk cut off every time a held
        job's channel closes may never finish). The held jobs settle on their closed channel as
        redeliveries: a finished one's result is published when it comes back."""
        session.replace_closed(
            self._jobs_channel,
            lambda: self._open_jobs_channel(connection, cancelled),
            what=f"{self._in_flight} job(s) unsettled (held longer than the broker's consumer_timeout? see docs/operations.md)",
        )
        logger.info("Consuming {} again", self._topology.jobs_queue)

    def _reopen_chunks_channel(
        self, connection: pika.BlockingConnection, cancelled: threading.Event, chunks: BlockingChannel
    ) -> BlockingChannel:
        return session.replace_closed(
            chunks,
            lambda: self._subscribe_chunks(connection, cancelled),
            what=f"{self._chunks_in_flight} chunk task(s) unsettled (held longer than the broker's consumer_timeout? "
            "see docs/operations.md)",
        )

    def _tend_lane(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> None:
        """The interactive consumer: a new channel if the broker closed its own; its priority in step with
        the bulk work (jobs and chunk tasks) this worker runs."""
        if self._lane is None:
            return
        self._lane.reopen_if_closed(connection, cancelled)
        self._lane.prioritise(busy=self._in_flight > self._lane.held or self._chunks_in_flight > 0)

    def _subscribe_jobs(self, connection: pika.BlockingConnection) -> None:
        on_message = functools.partial(self._on_message, connection, "bulk")
        self._jobs_tag = self._jobs_channel.basic_consume(
            self._topology.jobs_queue,
            session.guarded(on_message, name="job_delivery", requeue_delay=_REQUEUE_DELAY_SECONDS),
        )

    def _subscribe_chunks(
        self, connection: pika.BlockingConnection, cancelled: threading.Event
    ) -> BlockingChannel | None:
        if self._chunk_handler is None:
            return None
        chunks = connection.channel()
        chunks.confirm_delivery()
        chunks.basic_qos(prefetch_count=self._chunk_slots)
        chunks.add_on_cancel_callback(lambda _frame: cancelled.set())
        self._consume_chunks(connection, chunks)
        logger.info("Taking chunk tasks from {} ({} at a time)", self._topology.chunks_queue, self._chunk_slots)
        return chunks

    def _consume_chunks(self, connection: pika.BlockingConnection, chunks: BlockingChannel) -> None:
        on_chunk = functools.partial(self._on_chunk, connection)
        chunks.basic_consume(
            self._topology.chunks_queue,
            session.guarded(on_chunk, name="chunk_delivery", requeue_delay=_REQUEUE_DELAY_SECONDS),
            consumer_tag=self._topology.chunks_queue,
        )

    def _pause_jobs(self) -> None:
        """Stop taking jobs (deliveries not yet dispatched go back to the queue).

        Not while the jobs channel holds as many jobs as its prefetch allows: no job can come then, and a
        cancelled consumer that still holds a delivery is one RabbitMQ 3.10's quorum queues were seen to
        forget when its node died (the delivery stayed checked out to it, on no live channel, even after
        the node came back). _settle pauses once that job is done, if chunk tasks still run."""
        held = self._in_flight - (self._lane.held if self._lane is not None else 0)
        if held >= self._concurrent_jobs and not self._stopping.is_set():
            return
        if self._jobs_tag is not None and self._jobs_channel.is_open:
            self._jobs_channel.basic_cancel(self._jobs_tag)
            logger.debug("Not taking new jobs (chunk tasks come first, or the worker is stopping)")
        self._jobs_tag = None

    def _resume_jobs(self, connection: pika.BlockingConnection) -> None:
        """Take jobs again once no chunk task has been held for a moment."""
        quiet = time.monotonic() - self._last_chunk >= _CHUNK_QUIET_SECONDS
        if self._jobs_tag is None and not self._chunks_in_flight and quiet:
            self._subscribe_jobs(connection)

    def _check_consumers(
        self, connection: pika.BlockingConnection, cancelled: threading.Event, chunks: BlockingChannel | None
    ) -> BlockingChannel | None:
        """Every consumer_check_seconds, probe each consumer that holds no delivery and got none since the
        last check (a ghost gets none; a busy consumer is left alone, so that no delivery races the
        probe's cancel); one the broker lost is subscribed again on a new channel. Returns the chunk
        channel (maybe a new one)."""
        previous = self._checked_at
        if time.monotonic() - previous < self._session.options.consumer_check_seconds:
            return chunks
        self._checked_at = time.monotonic()
        t = self._topology
        idle = not self._in_flight and self._delivered_at < previous
        if self._jobs_tag is not None and idle and self._jobs_channel.is_open:
            present = self._consumer_present(connection, self._jobs_channel, t.jobs_queue, self._jobs_tag)
            if present is False:
                self._jobs_channel.close()
                self._open_jobs_channel(connection, cancelled)
            if present is not None:
                self._subscribe_jobs(connection)
            if present is False:
                logger.info("Consuming {} again", t.jobs_queue)
        lane = self._lane
        if (
            lane is not None
            and lane.tag is not None
            and not lane.held
            and lane.taken_at < previous
            and lane.channel.is_open
        ):
            present = self._consumer_present(connection, lane.channel, lane.queue, lane.tag)
            if present is not None:
                lane.resubscribe(connection, cancelled, present=present)
        if chunks is not None and not self._chunks_in_flight and self._last_chunk < previous and chunks.is_open:
            present = self._consumer_present(connection, chunks, t.chunks_queue, t.chunks_queue)
            if present is True:
                self._consume_chunks(connection, chunks)
            elif present is False:
                chunks.close()
                chunks = self._subscribe_chunks(connection, cancelled)
        return chunks

    def _consumer_present(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, queue: str, tag: str
    ) -> bool | None:
        """session.probe_consumer, which cancels the consumer: True when the broker had it, False when
        not (subscribe on a new channel), None when the queue is missing and nothing was cancelled (the
        broker's Basic.Cancel, or the next declare, handles that)."""
        try:
            return session.probe_consumer(self._probe_channel(connection), channel, queue, tag, owner="worker")
        except pika.exceptions.ChannelClosedByBroker:
            self._probe = None
            return None

    def _sample_depths(self, connection: pika.BlockingConnection) -> None:
        """Ready messages on the jobs and chunk queues, for /metrics (autoscalers read the broker's own)."""
        if time.monotonic() - self._depth_at < _DEPTH_EVERY_SECONDS:
            return
        self._depth_at = time.monotonic()
        for queue in filter(None, (self._topology.jobs_queue, self._topology.chunks_queue)):
            try:
                self.queue_depths[queue] = publisher.queue_depth(self._probe_channel(connection), queue)
            except pika.exceptions.ChannelClosedByBroker:
                self._probe = None  # the queue is gone: the consumer's cancel is handled elsewhere

    def _probe_channel(self, connection: pika.BlockingConnection) -> BlockingChannel:
        """A channel for passive declares, which close their channel when the queue is missing."""
        if self._probe is None or not self._probe.is_open:
            self._probe = connection.channel()
        return self._probe

    def _check_cancelled(self, cancelled: threading.Event) -> None:
        """Raise _NotConsuming when the broker took a consumer away: declare everything again."""
        if cancelled.is_set():
            t = self._topology
            queues = " or ".join(filter(None, (t.jobs_queue, t.interactive_queue, t.chunks_queue)))
            raise _NotConsuming(f"The broker cancelled the consumer of {queues} (queue deleted?)")

    def _on_message(
        self, connection: pika.BlockingConnection, lane: Lane, channel: BlockingChannel, method, properties, body: bytes
    ) -> None:
        headers = properties.headers or {}
        delivery = Delivery(
            body=body,
            attempt=_delivery_attempt(headers),
            published_at=_published_at(headers, properties.timestamp),
            message_id=properties.message_id,
            lane=lane,
        )
        self._count(+1)
        if lane == "interactive":
            self._lane.taken()
            pool = self._lane_pool
        else:
            self._delivered_at = time.monotonic()
            pool = self._pool
        pool.submit(self._work, connection, channel, method.delivery_tag, properties.reply_to, delivery)

    def _settle(
        self, channel: BlockingChannel, tag: int, reply_to: str | None, delivery: Delivery, outcome: Outcome
    ) -> None:
        try:
            self._settler.job(channel, tag, reply_to, delivery.body, outcome)
        finally:
            self._count(-1)
            if delivery.lane == "interactive" and channel is self._lane.channel:
                self._lane.settled()
            if self._chunks_in_flight:
                self._pause_jobs()  # chunk tasks first (the pause waited for this job to settle)

    # --- chunk tasks (fan-out) ---

    def _on_chunk(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, method, properties, body: bytes
    ) -> None:
        headers = properties.headers or {}
        delivery = ChunkDelivery(
            body=body, headers=headers, reply_to=properties.reply_to, attempt=_delivery_attempt(headers)
        )
        self._count_chunks(+1)
        self._pause_jobs()  # chunk tasks first: a job already started finishes before this worker takes another
        self._chunk_pool.submit(self._work_chunk, connection, channel, method.delivery_tag, delivery)

    def _work_chunk(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, tag: int, delivery: ChunkDelivery
    ) -> None:
        outcome = self._chunk_handler.handle(delivery, functools.partial(self._gathering, connection))
        settle = functools.partial(self._settle_chunk, channel, tag, delivery, outcome)
        if not self._handoffs.hand(connection, settle, undo=lambda: self._count_chunks(-1)):
            logger.warning("Connection lost while a chunk task ran; the broker will redeliver it")

    def _gathering(self, connection: pika.BlockingConnection, queue: str) -> bool:
        """Whether a gather queue exists (asked on the connection thread); True when the broker cannot say."""
        answer: Future[bool] = Future()

        def probe() -> None:
            try:
                publisher.queue_depth(self._probe_channel(connection), queue)
                answer.set_result(True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._probe = None
                answer.set_result(exc.reply_code != 404)
            except Exception:
                answer.set_result(True)

        if not self._threadsafe(connection, probe):
            return True
        try:
            return answer.result(timeout=30)
        except TimeoutError:
            return True

    def _settle_chunk(self, channel: BlockingChannel, tag: int, delivery: ChunkDelivery, outcome: ChunkOutcome) -> None:
        try:
            self._settler.chunk(channel, tag, delivery, outcome)
        finally:
            self._count_chunks(-1)

    def _count_chunks(self, delta: int) -> None:
        with self._count_lock:
            self._chunks_in_flight += delta
            self._last_chunk = time.monotonic()

    # --- job threads ---

    def _work(
        self,
        connection: pika.BlockingConnection,
        channel: BlockingChannel,
        tag: int,
        reply_to: str | None,
        delivery: Delivery,
    ) -> None:
        def progress(event: ProgressEvent) -> None:
            publish = functools.partial(self._settler.progress, channel, event)
            self._threadsafe(connection, session.guarded_call(publish, name="job_progress"))

        outcome = self._handler.handle(delivery, progress=progress)
        if outcome.action == "retry" and outcome.retry_delay:
            # Back off on this job thread, not the connection thread; a stop cuts the wait short.
            self._stopping.wait(outcome.retry_delay)
        settle = functools.partial(self._settle, channel, tag, reply_to, delivery, outcome)
        if not self._handoffs.hand(connection, settle, undo=lambda: self._count(-1)):
            logger.warning("Connection lost while the job ran; the broker will redeliver it")

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._in_flight += delta

    @staticmethod
    def _threadsafe(connection: pika.BlockingConnection, callback: Callable[[], None]) -> bool:
        """Hand `callback` to the connection's thread; False when the connection is gone (a progress event
        is then dropped, without a word: a job loses its connection once, and reports progress often)."""
        try:
            connection.add_callback_threadsafe(callback)
            return True
        except CONNECTION_ERRORS:
            return False
