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
  delivery, it is probed and, when the broker had lost it, subscribed again on a new channel
  (probes.py, with the sampling of queue depths).
- `connected` is set only while consuming: /healthz answers 503 otherwise.
- Fan-out (when the topology has a chunk queue): a second channel consumes chunk tasks onto a pool
  of `chunk_slots` threads (the process's whisper states); their replies go to the job's gather
  queue, then the task is acked (chunk_consumer.py). Chunk tasks come before new jobs: while this
  worker holds any, its jobs consumer is cancelled, so a job already started (fanned out) finishes
  before new ones begin here; it subscribes again a second after the last chunk task settles (bulk.py).
- The interactive lane (when the topology has its queue): a third channel consumes it onto threads of
  its own (`interactive_jobs`), never paused for chunk tasks, its priority lower while this worker
  runs bulk work (lane.py); such a job's whisper calls go before the bulk ones (pipeline/lanes.py).
- `stop()` (first SIGTERM/SIGINT): cancel consumption, let the jobs in flight finish and settle,
  then close. `abort()` (second signal): close at once; unacked jobs are requeued by the broker.
"""

import dataclasses
import functools
import threading
from collections.abc import Callable

import pika
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.pipeline import Lane
from worker.service import publisher, session
from worker.service.bulk import BulkConsumer
from worker.service.chunk_consumer import ChunkConsumer
from worker.service.chunks import ChunkHandler, ChunkOutcome
from worker.service.job_threads import JobThreads
from worker.service.jobs import JobHandler
from worker.service.lane import InteractiveConsumer
from worker.service.outcome import Delivery, Outcome
from worker.service.probes import ConsumerCheck, DepthSampler, ProbeChannel
from worker.service.publisher import Topology
from worker.service.session import BrokerSession, SessionOptions
from worker.service.settle import Handoffs, Settler

# A delivery whose callback failed (a bug: say an unreadable header) goes back to the queue this much
# later; the queue's delivery limit bounds the retries.
_REQUEUE_DELAY_SECONDS = 5.0


class _NotConsuming(session.ReconnectNow):
    """The broker closed our channel or cancelled our consumer; the connection is still up."""


def _check_cancelled(cancelled: threading.Event, t: Topology) -> None:
    """Raise _NotConsuming when the broker took a consumer away: declare everything again."""
    if cancelled.is_set():
        queues = " or ".join(filter(None, (t.jobs_queue, t.interactive_queue, t.chunks_queue)))
        raise _NotConsuming(f"The broker cancelled the consumer of {queues} (queue deleted?)")


class Consumer:
    """Consumes jobs (bulk and interactive) and chunk tasks on one connection; its channels replaced and its
    consumers checked between rounds of events; a graceful stop."""

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
        self._stopping = threading.Event()
        self._handoffs = Handoffs()  # settlements handed to the connection's thread, not yet run
        settler = Settler(
            topology, handler, on_settled=on_settled, on_chunk_settled=on_chunk_settled,
            requeue_delay=_REQUEUE_DELAY_SECONDS,
        )  # fmt: skip
        self._jobs = JobThreads(
            handler, settler, self._handoffs, slots={"bulk": concurrent_jobs, "interactive": interactive_jobs},
            stopping=self._stopping, on_taken=self._taken, on_settled=self._job_settled,
        )  # fmt: skip
        self._probe = ProbeChannel()
        self._check = ConsumerCheck(self._probe, session_options.consumer_check_seconds)
        self._depths = DepthSampler(self._probe, (topology.jobs_queue, topology.chunks_queue))
        busy = lambda: self._jobs.in_flight > 0  # noqa: E731 (the consumer check leaves a busy worker alone)
        self._bulk = BulkConsumer(topology.jobs_queue, concurrent_jobs, requeue_delay=_REQUEUE_DELAY_SECONDS, busy=busy)
        # The interactive lane (lane.py): its own consumer and job threads, beside the jobs queue's.
        queue = topology.interactive_queue
        self._lane = (
            InteractiveConsumer(queue, interactive_jobs, requeue_delay=_REQUEUE_DELAY_SECONDS) if queue else None
        )
        self._chunks = None
        if chunk_handler is not None and topology.chunks_queue:
            self._chunks = ChunkConsumer(
                topology.chunks_queue, chunk_handler, chunk_slots, settler=settler, handoffs=self._handoffs,
                probe=self._probe, on_taken=self._pause_jobs, requeue_delay=_REQUEUE_DELAY_SECONDS,
            )  # fmt: skip
        self.connected = threading.Event()

    @property
    def connections(self) -> int:
        """Successful connects since start; more than 1 means it reconnected."""
        return self._session.connects

    @property
    def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue, sampled every few seconds (one dict, updated in place)."""
        return self._depths.queue_depths

    @property
    def in_flight(self) -> int:
        return self._jobs.in_flight

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Consume until stop(); the session reconnects with backoff when the broker is down or drops us."""
        self._session.run(self._consume, stop=self._stopping, on_lost=self._lost)
        self._jobs.shutdown()
        if self._chunks is not None:
            self._chunks.shutdown()
        logger.info("Consumer stopped")

    def _lost(self) -> None:
        self.connected.clear()
        if dropped := self._handoffs.lost():
            logger.warning("The connection ended before {} finished delivery(ies) settled; the broker redelivers them",
                           dropped)  # fmt: skip

    def stop(self) -> None:
        """Graceful: stop taking jobs, finish the ones in flight, then close."""
        self._stopping.set()  # first: a signal handler that interrupts the log call must see it
        logger.info("Stopping: no new jobs; finishing {} in flight", self.in_flight)

    def _consume(self, connection: pika.BlockingConnection) -> None:
        """The work of one connection (the session opens and closes it)."""
        cancelled = threading.Event()
        self._subscribe(connection, cancelled)
        self.connected.set()
        self._session.established()
        logger.info("Consuming {} ({} job(s) at a time)", self._topology.jobs_queue, self._bulk.prefetch)
        while not self._stopping.is_set():
            connection.process_data_events(time_limit=1)
            self._tend(connection, cancelled)
        self._pause_jobs()
        for consumer in (self._lane, self._chunks):
            if consumer is not None:
                consumer.stop()
        while self.in_flight or self._chunks_in_flight:  # heartbeats and settlements while work finishes
            connection.process_data_events(time_limit=1)

    def _subscribe(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> None:
        """Declare the topology, then open every consumer's channel and subscribe."""
        self._probe.forget()
        declare = connection.channel()
        publisher.declare(declare, self._topology)
        declare.close()
        self._bulk.open(connection, cancelled, functools.partial(self._jobs.on_message, connection, "bulk"))
        if self._lane is not None:
            self._lane.open(connection, cancelled, functools.partial(self._jobs.on_message, connection, "interactive"))
        if self._chunks is not None:
            self._chunks.open(connection, cancelled)
        self._bulk.subscribe()
        self._check.start()

    def _tend(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> None:
        """Between rounds of events: channels the broker closed replaced, jobs resumed after chunk tasks,
        the lane's priority in step with the bulk work, the consumers checked, queue depths sampled."""
        _check_cancelled(cancelled, self._topology)
        self._bulk.reopen_if_closed(connection, cancelled, self.in_flight)
        if self._chunks is not None:
            self._chunks.reopen_if_closed(connection, cancelled)
        self._bulk.resume(chunks_quiet=self._chunks is None or self._chunks.quiet())
        if self._lane is not None:
            self._lane.reopen_if_closed(connection, cancelled)
            self._lane.prioritise(busy=self.in_flight > self._lane.held or self._chunks_in_flight > 0)
        self._check.run(connection, cancelled, (self._bulk, self._lane, self._chunks))
        self._depths.sample(connection)

    @property
    def _chunks_in_flight(self) -> int:
        return self._chunks.in_flight if self._chunks is not None else 0

    def _pause_jobs(self) -> None:
        """Stop taking jobs while chunk tasks run, or for good when stopping (bulk.py says when not)."""
        held = self.in_flight - (self._lane.held if self._lane is not None else 0)
        self._bulk.pause(held, stopping=self._stopping.is_set())

    def _taken(self, lane: Lane) -> None:
        (self._lane if lane == "interactive" else self._bulk).taken()

    def _job_settled(self, delivery: Delivery, channel: BlockingChannel) -> None:
        if delivery.lane == "interactive" and channel is self._lane.channel:
            self._lane.settled()
        if self._chunks_in_flight:
            self._pause_jobs()  # chunk tasks first (the pause waited for this job to settle)
