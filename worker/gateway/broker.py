"""The gateway's side of RabbitMQ: publish jobs, receive their results and progress.

One thread owns the pika connection (pika is not thread-safe). Request handlers, on the event loop,
hand it a job and get a concurrent Future that resolves once the broker confirmed the job. Results
come back on two queues:
- the reply queue of this process, for requests that wait for their answer (named per process,
  expiring when the process is gone, so a reconnect keeps the replies that arrived meanwhile; a quorum
  queue, so that on a cluster it outlives the node it was declared on, and the process's connection);
- the durable results queue of all gateway replicas, for async jobs: whichever replica takes a
  result records it in the shared database, and one that restarts finds them waiting.
Progress events of every job reach each process (a queue of its own bound to the progress
exchange), for the job records and the SSE streams.
BrokerClient owns the connection's thread and publishes; its Inbox holds the channel that consumes.

The connection is a broker session's (worker.service.session): it reconnects with capped, jittered
backoff, and the thread never dies. Every callback on it is guarded: an exception (the database
down, a bug) is logged and counted, and the message is
- a result on the reply queue or a progress event (auto-acked; losing one is harmless: the request
  times out, the next event or the result supersedes it): dropped;
- a result on the durable queue: requeued REQUEUE_DELAY_SECONDS later, for this replica or another.
A channel the broker closes is replaced, and so is the results consumer when the periodic check
(session.probe_consumer, every consumer_check_seconds) finds the broker no longer delivers to it
(the durable queue deleted and declared again). `on_disconnect` runs every time the connection
ends (lost, or closed by `stop`), and jobs handed to `publish` that the broker had not confirmed by
then fail with BrokerUnavailable.
"""

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future

import pika
import pika.exceptions
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.errors import BrokerUnavailable
from worker.messages import ProgressEvent, Result
from worker.service import publisher, session
from worker.service.publisher import Topology
from worker.service.session import BrokerSession, SessionOptions

_REPLY_EXPIRES_MS = 15 * 60 * 1000
# An async result that cannot be recorded (the database is down) goes back to the queue this much
# later, not at once: an immediate requeue comes straight back, a tight loop of failures (and
# RabbitMQ 4's quorum queues drop a message after 20 requeues by default).
REQUEUE_DELAY_SECONDS = 5.0


class BrokerClient:
    """Publishes jobs and routes their results to whoever waits for them (through its Inbox)."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        async_results_queue: str,
        on_result: Callable[[Result], None],
        on_async_result: Callable[[Result], None],
        on_progress: Callable[[ProgressEvent], None],
        on_disconnect: Callable[[], None] = lambda: None,
        options: SessionOptions = session.DEFAULT_OPTIONS,
    ) -> None:
        self._session = BrokerSession(url, options)
        self._topology = topology
        self._on_disconnect = on_disconnect
        self.async_results_queue = async_results_queue
        self.reply_queue = f"transcription.gateway.{uuid.uuid4().hex[:12]}"
        self._inbox = Inbox(
            topology,
            reply_queue=self.reply_queue,
            async_results_queue=async_results_queue,
            on_result=on_result,
            on_async_result=on_async_result,
            on_progress=on_progress,
            consumer_check_seconds=options.consumer_check_seconds,
        )
        self._connection: pika.BlockingConnection | None = None
        self._publishing = session.PublishChannel()  # jobs go out here; the inbox's channel consumes
        self._pending: set[Future] = set()  # handed to the connection thread, not yet confirmed
        self._lock = threading.Lock()  # _connection and _pending, between request threads and this one
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

    def publish(self, job_id: str, body: bytes, *, wait: bool = True, interactive: bool = False) -> Future:
        """Hand a job to the connection thread; the future resolves once the broker confirmed it.

        `wait`: its result comes to this process's reply queue (a request waits for it), else to the
        replicas' durable results queue (an async job). `interactive`: on the interactive lane's queue.
        """
        reply_to = self.reply_queue if wait else self.async_results_queue
        done: Future = Future()
        with self._lock:
            connection = self._connection
            if connection is None or not self.connected.is_set():
                done.set_exception(BrokerUnavailable("the broker is not reachable"))
                return done
            self._pending.add(done)
            try:
                connection.add_callback_threadsafe(
                    lambda: self._publish(connection, job_id, body, reply_to, interactive, done)
                )
            except pika.exceptions.AMQPError as exc:
                self._pending.discard(done)
                done.set_exception(BrokerUnavailable(f"the broker is not reachable ({exc})"))
        return done

    # --- connection thread ---

    def _publish(
        self,
        connection: pika.BlockingConnection,
        job_id: str,
        body: bytes,
        reply_to: str,
        interactive: bool,
        done: Future,
    ) -> None:
        with self._lock:
            if done not in self._pending:
                return  # failed already: the connection it was handed to is gone
        try:
            publisher.publish_job(
                self._publishing.on(connection),
                self._topology,
                body,
                job_id,
                reply_to=reply_to,
                published_at=time.time(),
                interactive=interactive,
            )
            outcome: BaseException | None = None
        except Exception as exc:  # the waiter turns it into a 503
            self._publishing.refused()
            outcome = BrokerUnavailable(f"the broker did not take the job ({exc})")
        with self._lock:
            self._pending.discard(done)
        _settle(done, outcome)

    def _run(self) -> None:
        # Exception, not only the broker's: whatever happens, this thread lives on (and reconnects).
        self._session.run(self._serve, stop=self._stopping, retry_on=(Exception,), on_lost=self._lost)

    def _lost(self) -> None:
        """After every connection: fail the jobs it had not confirmed, then tell the app."""
        with self._lock:
            self.connected.clear()
            self._connection = None
            pending, self._pending = self._pending, set()
        for done in pending:
            _settle(done, BrokerUnavailable("the connection to the broker was lost before it confirmed the job"))
        self._on_disconnect()

    def _serve(self, connection: pika.BlockingConnection) -> None:
        channel = self._inbox.open(connection)
        with self._lock:
            self._connection = connection
        self.connected.set()
        self._session.established()
        logger.info("Publishing to {}; results on {}", self._topology.jobs_queue, self.reply_queue)
        while not self._stopping.is_set():
            connection.process_data_events(time_limit=1)
            channel = session.replace_closed(
                channel, lambda: self._inbox.open(connection), what="the gateway (replies, results, progress)"
            )
            channel = self._inbox.check_results_consumer(connection, channel)


class Inbox:
    """What comes back, on the connection thread: one channel consuming the reply queue, the replicas'
    durable results queue and this process's progress queue, each message handed to its callback."""

    def __init__(
        self,
        topology: Topology,
        *,
        reply_queue: str,
        async_results_queue: str,
        on_result: Callable[[Result], None],
        on_async_result: Callable[[Result], None],
        on_progress: Callable[[ProgressEvent], None],
        consumer_check_seconds: float,
    ) -> None:
        self._topology = topology
        self._reply_queue = reply_queue
        self._async_results_queue = async_results_queue
        self._on_result = on_result
        self._on_async_result = on_async_result
        self._on_progress = on_progress
        self._consumer_check_seconds = consumer_check_seconds
        self._results_tag = ""  # the durable results queue's consumer on the channel `open` returned
        self._checked_at = 0.0

    def open(self, connection: pika.BlockingConnection) -> BlockingChannel:
        """A channel that publishes (confirmed) and consumes the reply, results and progress queues."""
        channel = connection.channel()
        channel.confirm_delivery()
        publisher.declare(channel, self._topology)
        channel.queue_declare(
            self._reply_queue, durable=True, arguments={"x-queue-type": "quorum", "x-expires": _REPLY_EXPIRES_MS}
        )
        channel.basic_consume(self._reply_queue, session.guarded(self._reply, name="gateway_result"), auto_ack=True)
        channel.queue_declare(self._async_results_queue, durable=True, arguments={"x-queue-type": "quorum"})
        self._consume_results(channel)
        # Gone with its consumer (auto_delete): a replaced channel leaves no queue filling up behind it.
        progress = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(progress, self._topology.progress_exchange, routing_key="#")
        channel.basic_consume(progress, session.guarded(self._progress, name="gateway_progress"), auto_ack=True)
        self._checked_at = time.monotonic()
        return channel

    def check_results_consumer(self, connection: pika.BlockingConnection, channel: BlockingChannel) -> BlockingChannel:
        """Every consumer_check_seconds: does the broker still deliver the durable results queue to us?
        When not, the channel is replaced (which releases what a ghost consumer holds). A result whose
        requeue is pending goes back to the queue a little sooner; a progress event may be missed."""
        if time.monotonic() - self._checked_at < self._consumer_check_seconds:
            return channel
        self._checked_at = time.monotonic()
        probe = connection.channel()
        try:
            present = session.probe_consumer(
                probe, channel, self._async_results_queue, self._results_tag, owner="gateway"
            )
        except pika.exceptions.ChannelClosedByBroker:
            return channel  # the queue is missing (nothing cancelled): the broker's Basic.Cancel comes
        finally:
            if probe.is_open:
                probe.close()
        if present:
            self._consume_results(channel)
            return channel
        channel.close()
        return self.open(connection)

    def _consume_results(self, channel: BlockingChannel) -> None:
        # Acked once recorded: a result is not lost if this process dies while it handles it. The delay
        # is read here (not at import), so that a test may shorten it.
        durable = session.guarded(self._durable_reply, name="gateway_async_result", requeue_delay=REQUEUE_DELAY_SECONDS)
        self._results_tag = channel.basic_consume(self._async_results_queue, durable)

    def _reply(self, _channel, _method, _properties, body: bytes) -> None:
        result = _result(body)
        if result is not None:
            self._on_result(result)

    def _durable_reply(self, channel, method, _properties, body: bytes) -> None:
        """Recorded, then acked; raising (the database is down) requeues it later (see `guarded`)."""
        result = _result(body)
        if result is not None:
            self._on_async_result(result)
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


def _settle(done: Future, error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
