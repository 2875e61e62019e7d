"""The gateway's side of RabbitMQ: publish jobs, receive their results on a reply queue of its own.

One thread owns the pika connection (pika is not thread-safe). Request handlers, on the event loop,
hand it a job and get a concurrent Future that resolves once the broker confirmed the job; results
arrive on the gateway's reply queue, correlated by job id, and resolve the waiter registered for
that id. The reply queue is named per gateway process and expires when the process is gone, so a
reconnect keeps the replies that arrived meanwhile.
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
from worker.messages import Result
from worker.service import publisher
from worker.service.publisher import Topology

_REPLY_EXPIRES_MS = 15 * 60 * 1000


class BrokerClient:
    """Publishes jobs and routes their results to whoever waits for them."""

    def __init__(self, url: str, topology: Topology, on_result: Callable[[Result], None]) -> None:
        self._parameters = pika.URLParameters(url)
        self._parameters.heartbeat = 30
        self._topology = topology
        self._on_result = on_result
        self.reply_queue = f"transcription.gateway.{uuid.uuid4().hex[:12]}"
        self._connection: pika.BlockingConnection | None = None
        self._channel = None
        self._stopping = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amqp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def publish(self, job_id: str, body: bytes) -> Future:
        """Hand a job to the connection thread; the future resolves once the broker confirmed it."""
        done: Future = Future()
        connection = self._connection
        if connection is None or not self.connected.is_set():
            done.set_exception(BrokerUnavailable("the broker is not reachable"))
            return done
        try:
            connection.add_callback_threadsafe(lambda: self._publish(job_id, body, done))
        except pika.exceptions.AMQPError as exc:
            done.set_exception(BrokerUnavailable(f"the broker is not reachable ({exc})"))
        return done

    # --- connection thread ---

    def _publish(self, job_id: str, body: bytes, done: Future) -> None:
        try:
            publisher.publish_job(
                self._channel, self._topology, body, job_id, reply_to=self.reply_queue, published_at=time.time()
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
            channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)
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

    def _on_reply(self, _channel, _method, _properties, body: bytes) -> None:
        try:
            result = Result.model_validate_json(body)
        except ValueError as exc:
            logger.error("Ignoring an unreadable result: {}", exc)
            return
        self._on_result(result)
