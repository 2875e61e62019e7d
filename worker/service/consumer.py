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
- If the connection drops, unacked jobs go back to the queue (the broker does that); the
  consumer reconnects with capped exponential backoff, never in a busy loop.
- If the broker closes the channel (a delivery held past its `consumer_timeout`) or cancels the
  consumer (the queue was deleted, or moved on failover) while the connection stays up, the
  worker is no longer consuming: it says so, drops the connection and connects, declares and
  subscribes again. A job still running from the old channel finishes; its result is kept and
  published when the broker redelivers the job (JobHandler), not computed again.
- `connected` is set only while consuming: /healthz answers 503 otherwise.
- `stop()` (first SIGTERM/SIGINT): cancel consumption, let the jobs in flight finish and settle,
  then close. `abort()` (second signal): close at once; unacked jobs are requeued by the broker.
"""

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pika
import pika.exceptions
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.messages import ProgressEvent
from worker.service import publisher
from worker.service.jobs import Delivery, JobHandler, Outcome
from worker.service.publisher import Topology

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
)


def _published_at(headers: dict, timestamp: int | None) -> float | None:
    """When the job was published: the exact header if the publisher set it, else the AMQP timestamp."""
    exact_ms = headers.get("x-published-at-ms")
    if isinstance(exact_ms, int):
        return exact_ms / 1000.0
    return float(timestamp) if timestamp else None


def _is_precondition_failed(exc: Exception) -> bool:
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 406


class _NotConsuming(Exception):
    """The broker closed our channel or cancelled our consumer; the connection is still up."""


class Consumer:
    """Pulls jobs, runs them on a pool, settles them on the connection thread."""

    def __init__(
        self,
        *,
        url: str,
        topology: Topology,
        handler: JobHandler,
        concurrent_jobs: int = 1,
        heartbeat_seconds: int = 60,
        reconnect_max_seconds: float = 30.0,
        on_settled: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        self._parameters = pika.URLParameters(url)
        self._parameters.heartbeat = heartbeat_seconds
        self._parameters.blocked_connection_timeout = 300
        self._topology = topology
        self._handler = handler
        self._concurrent_jobs = concurrent_jobs
        self._reconnect_max = reconnect_max_seconds
        self._on_settled = on_settled
        self._pool = ThreadPoolExecutor(max_workers=concurrent_jobs, thread_name_prefix="job")
        self._stopping = threading.Event()
        self._in_flight = 0
        self._count_lock = threading.Lock()  # job threads decrement too, when a connection was lost
        self.connected = threading.Event()
        self.connections = 0  # successful connects since start; more than 1 means it reconnected

    # --- lifecycle ---

    def run(self) -> None:
        """Consume until stop(); reconnects with backoff when the broker is down or drops us."""
        delay = 1.0
        while not self._stopping.is_set():
            try:
                self._consume()
                delay = 1.0
            except _NotConsuming as exc:
                self.connected.clear()
                logger.error("{}; connecting and subscribing again", exc)
                delay = 1.0
            except _CONNECTION_ERRORS as exc:
                self.connected.clear()
                if self._stopping.is_set():
                    break
                if _is_precondition_failed(exc):
                    # A configuration error, not an outage: say so, and keep trying, so that
                    # the worker recovers once the queue or the settings are put right.
                    logger.error(
                        "The broker refused the topology ({}): a queue exists with other arguments; align "
                        "DELIVERY_LIMIT and the queue names with it, or delete it; reconnecting in {:.0f} s",
                        exc,
                        delay,
                    )
                else:
                    logger.warning(
                        "Broker unavailable ({}); reconnecting in {:.0f} s", exc or type(exc).__name__, delay
                    )
                self._stopping.wait(delay)
                delay = min(delay * 2, self._reconnect_max)
        self._pool.shutdown(wait=True)
        logger.info("Consumer stopped")

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

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self._parameters)
        self.connections += 1
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            publisher.declare(channel, self._topology)
            channel.basic_qos(prefetch_count=self._concurrent_jobs)
            cancelled = threading.Event()
            channel.add_on_cancel_callback(lambda _frame: cancelled.set())
            tag = channel.basic_consume(self._topology.jobs_queue, functools.partial(self._on_message, connection))
            self.connected.set()
            logger.info("Consuming {} ({} job(s) at a time)", self._topology.jobs_queue, self._concurrent_jobs)
            while not self._stopping.is_set():
                connection.process_data_events(time_limit=1)
                self._check_consuming(channel, cancelled)
            channel.basic_cancel(tag)
            while self._in_flight:  # keep heartbeats and settlements going while jobs finish
                connection.process_data_events(time_limit=1)
        finally:
            self.connected.clear()
            if connection.is_open:
                connection.close()

    def _check_consuming(self, channel: BlockingChannel, cancelled: threading.Event) -> None:
        """Raise _NotConsuming when the broker took our channel or consumer away."""
        if channel.is_closed:
            raise _NotConsuming(
                f"The broker closed the channel with {self._in_flight} job(s) unsettled (a delivery held "
                "longer than the broker's consumer_timeout? see README)"
            )
        if cancelled.is_set():
            raise _NotConsuming(f"The broker cancelled the consumer of {self._topology.jobs_queue} (queue deleted?)")

    def _on_message(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, method, properties, body: bytes
    ) -> None:
        headers = properties.headers or {}
        delivery = Delivery(
            body=body,
            attempt=int(headers.get("x-delivery-count") or 0) + 1,
            published_at=_published_at(headers, properties.timestamp),
            message_id=properties.message_id,
        )
        self._count(+1)
        self._pool.submit(self._work, connection, channel, method.delivery_tag, properties.reply_to, delivery)

    def _settle(self, channel: BlockingChannel, tag: int, reply_to: str | None, body: bytes, outcome: Outcome) -> None:
        """Carry out a job's outcome; runs on the connection thread."""
        try:
            if not channel.is_open:
                logger.warning("Channel closed before job settled; the broker will redeliver it")
                return
            self._apply(channel, tag, reply_to, body, outcome)
            self._on_settled(outcome)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            logger.error("Broker refused the result ({}); requeueing the job", exc)
            channel.basic_nack(tag, requeue=True)
        except _CONNECTION_ERRORS:
            raise  # the connection is gone: reconnect; the broker redelivers the job
        except Exception:  # a bug while settling: keep consuming; the delivery limit bounds the retries
            logger.exception("Settling a job failed; requeueing it")
            channel.basic_nack(tag, requeue=True)
        finally:
            self._count(-1)

    def _apply(self, channel: BlockingChannel, tag: int, reply_to: str | None, body: bytes, outcome: Outcome) -> None:
        t = self._topology
        if outcome.action == "complete":
            publisher.publish_result(channel, t, outcome.result, reply_to=reply_to)
            self._handler.mark_published(outcome.result)
            self._publish_progress(
                channel, ProgressEvent(job_id=outcome.result.job_id, stage="completed", percent=100.0)
            )
            channel.basic_ack(tag)
        elif outcome.action == "dead_letter":
            publisher.publish_result(channel, t, outcome.result, reply_to=reply_to)
            publisher.dead_letter(channel, t, body, outcome.result)
            channel.basic_ack(tag)
        elif outcome.action == "retry":
            channel.basic_nack(tag, requeue=True)
        else:
            channel.basic_ack(tag)

    def _publish_progress(self, channel: BlockingChannel, event: ProgressEvent) -> None:
        if channel.is_open:
            publisher.publish_progress(channel, self._topology, event)

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
            self._threadsafe(connection, functools.partial(self._publish_progress, channel, event))

        outcome = self._handler.handle(delivery, progress=progress)
        if outcome.action == "retry" and outcome.retry_delay:
            # Back off on this job thread, not the connection thread; a stop cuts the wait short.
            self._stopping.wait(outcome.retry_delay)
        settle = functools.partial(self._settle, channel, tag, reply_to, delivery.body, outcome)
        if not self._threadsafe(connection, settle):
            self._count(-1)

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._in_flight += delta

    @staticmethod
    def _threadsafe(connection: pika.BlockingConnection, callback: Callable[[], None]) -> bool:
        try:
            connection.add_callback_threadsafe(callback)
            return True
        except _CONNECTION_ERRORS:
            logger.warning("Connection lost while a job ran; the broker will redeliver it")
            return False
