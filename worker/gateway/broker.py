"""The gateway's side of RabbitMQ: publish jobs, receive their results and progress.

One thread owns the pika connection (pika is not thread-safe). Request handlers, on the event loop,
hand it a job and get a concurrent Future that resolves once the broker confirmed the job. Results
come back on two queues:
- the reply queue of this process, for requests that wait for their answer (named per process,
  expiring when the process is gone, so a reconnect keeps the replies that arrived meanwhile);
- the durable results queue of all gateway replicas, for async jobs: whichever replica takes a
  result records it in the shared database, and one that restarts finds them waiting.
Progress events of every job reach each process (a queue of its own bound to the progress
exchange), for the job records and the SSE streams.
"""

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future

import pika
import pika.exceptions
from loguru import logger

from worker.errors import BrokerUnavailable
from worker.messages import ProgressEvent, Result
from worker.service import publisher
from worker.service.publisher import Topology

_REPLY_EXPIRES_MS = 15 * 60 * 1000
# An async result that cannot be recorded (the database is down) goes back to the queue this much
# later, not at once: an immediate requeue comes straight back, a tight loop of failures (and
# RabbitMQ 4's quorum queues drop a message after 20 requeues by default).
REQUEUE_DELAY_SECONDS = 5.0


class BrokerClient:
    """Publishes jobs and routes their results to whoever waits for them."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        async_results_queue: str,
        on_result: Callable[[Result], None],
        on_async_result: Callable[[Result], None],
        on_progress: Callable[[ProgressEvent], None],
    ) -> None:
        self._parameters = pika.URLParameters(url)
        self._parameters.heartbeat = 30
        self._topology = topology
        self._on_result = on_result
        self._on_async_result = on_async_result
        self._on_progress = on_progress
        self.async_results_queue = async_results_queue
        self.reply_queue = f"transcription.gateway.{uuid.uuid4().hex[:12]}"
        self._connection: pika.BlockingConnection | None = None
        self._channel = None
        self._stopping = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amqp", daemon=True)

    def start(self, wait_seconds: float = 10.0) -> None:
        """Connect in the background; wait a little for it, so that the first requests find the broker."""
        self._thread.start()
        if not self.connected.wait(wait_seconds):
            logger.warning("No broker after {:.0f} s; answering 503 until it comes", wait_seconds)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def publish(self, job_id: str, body: bytes, *, wait: bool = True) -> Future:
        """Hand a job to the connection thread; the future resolves once the broker confirmed it.

        `wait`: its result comes to this process's reply queue (a request waits for it), else to the
        replicas' durable results queue (an async job).
        """
        reply_to = self.reply_queue if wait else self.async_results_queue
        done: Future = Future()
        connection = self._connection
        if connection is None or not self.connected.is_set():
            done.set_exception(BrokerUnavailable("the broker is not reachable"))
            return done
        try:
            connection.add_callback_threadsafe(lambda: self._publish(job_id, body, reply_to, done))
        except pika.exceptions.AMQPError as exc:
            done.set_exception(BrokerUnavailable(f"the broker is not reachable ({exc})"))
        return done

    # --- connection thread ---

    def _publish(self, job_id: str, body: bytes, reply_to: str, done: Future) -> None:
        try:
            publisher.publish_job(
                self._channel, self._topology, body, job_id, reply_to=reply_to, published_at=time.time()
            )
            done.set_result(None)
        except Exception as exc:  # the waiter turns it into a 503
            done.set_exception(BrokerUnavailable(f"the broker did not take the job ({exc})"))

    def _run(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                self._serve()
                delay = 1.0
            except pika.exceptions.AMQPError as exc:
                self.connected.clear()
                logger.warning("Broker unavailable ({}); reconnecting in {:.0f} s", exc or type(exc).__name__, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)

    def _serve(self) -> None:
        connection = pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            publisher.declare(channel, self._topology)
            channel.queue_declare(self.reply_queue, durable=False, arguments={"x-expires": _REPLY_EXPIRES_MS})
            channel.basic_consume(self.reply_queue, self._reply(self._on_result), auto_ack=True)
            channel.queue_declare(self.async_results_queue, durable=True, arguments={"x-queue-type": "quorum"})
            # Acked once recorded: a result is not lost if this process dies while it handles it.
            channel.basic_consume(self.async_results_queue, self._durable_reply)
            progress = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(progress, self._topology.progress_exchange, routing_key="#")
            channel.basic_consume(progress, self._progress, auto_ack=True)
            self._connection, self._channel = connection, channel
            self.connected.set()
            logger.info("Publishing to {}; results on {}", self._topology.jobs_queue, self.reply_queue)
            while not self._stopping.is_set():
                connection.process_data_events(time_limit=1)
        finally:
            self.connected.clear()
            self._connection = None
            if connection.is_open:
                connection.close()

    @staticmethod
    def _reply(handler: Callable[[Result], None]) -> Callable:
        def on_message(_channel, _method, _properties, body: bytes) -> None:
            result = _result(body)
            if result is not None:
                handler(result)

        return on_message

    def _durable_reply(self, channel, method, _properties, body: bytes) -> None:
        result = _result(body)
        try:
            if result is not None:
                self._on_async_result(result)
        except Exception:  # the database is down: the result stays on the queue for a replica (or us) later
            logger.exception(
                "Recording the result of job {} failed; it is requeued in {:.0f} s",
                result.job_id,
                REQUEUE_DELAY_SECONDS,
            )
            channel.connection.call_later(REQUEUE_DELAY_SECONDS, lambda: _requeue(channel, method.delivery_tag))
            return
        channel.basic_ack(method.delivery_tag)

    def _progress(self, _channel, _method, _properties, body: bytes) -> None:
        try:
            event = ProgressEvent.model_validate_json(body)
        except ValueError:
            return
        self._on_progress(event)


def _result(body: bytes) -> Result | None:
    try:
        return Result.model_validate_json(body)
    except ValueError as exc:
        logger.error("Ignoring an unreadable result: {}", exc)
        return None


def _requeue(channel, tag: int) -> None:
    if channel.is_open:  # else the broker requeued it with the channel
        channel.basic_nack(tag, requeue=True)
