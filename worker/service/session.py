"""One broker session for every pika connection of the runtime: the consumer's, the fan-out
coordinator's and the gateway's.

What it owns, so that its users say what to do with a message and never how to survive a dropped
socket (STYLE 16):
- `broker_urls`, `connection_parameters`: AMQP_URL names one broker, or the nodes of a cluster separated
  by `;` (kombu's convention); each gets the heartbeat and blocked-connection timeout from Settings.
- `BrokerSession.connect`: the first node that answers. Each session starts on a node of its own (the
  list shuffled once), and after a connection ends it starts on the next node: a fleet spreads over the
  cluster, and a node that died is tried last, not first.
- `BrokerSession.run`: the one reconnect loop. Capped exponential backoff with jitter (so workers
  that lost the broker together do not knock on it together), restarted once a connection is
  established; the broker's error logged without the password; it ends when `stop` is set (or
  when the session's work returns).
- `replace_closed`: a channel the broker closed (a delivery held past its consumer_timeout) is
  replaced alone; the connection and its other channels carry on.
- `probe_consumer`: whether the broker still has a consumer on its queue. A quorum queue deleted
  and declared again at once sends its consumers no Basic.Cancel; the broker keeps counting them
  (consumer_count does not drop) while their deliveries never reach the client.
- `guarded` / `guarded_call`: a callback that runs on the connection's thread is wrapped once: its
  exception is logged (with the job id), counted in `transcription_broker_callback_errors_total`,
  its message requeued later or dropped (the rule is the caller's `requeue_delay`), and the thread
  lives on. A lost connection is not swallowed: it propagates to the reconnect loop.

Everything here runs on the thread that owns the connection, as pika requires.
"""

import functools
import json
import random
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pika
import pika.exceptions
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import Counter

T = TypeVar("T")

# Each wait is drawn from [1 - JITTER, 1] of its step (never above the cap). 10 %: the steps still read
# 1 s, 2 s, 4 s in whole seconds, and reconnects after a broker restart spread over a tenth of the step.
JITTER = 0.1
_PRECONDITION_FAILED = 406

CALLBACK_ERRORS = Counter(
    "transcription_broker_callback_errors_total",
    "Exceptions raised by callbacks on a broker connection's thread (logged; the thread carried on)",
    ["callback"],
)
RESUBSCRIBED = Counter(
    "transcription_broker_resubscribes_total",
    "Consumers found missing on their queue by the periodic check, and subscribed again",
    ["queue"],
)


@dataclass(frozen=True)
class SessionOptions:
    """The broker session's timers (Settings: HEARTBEAT_SECONDS, RECONNECT_MAX_SECONDS, ...)."""

    heartbeat_seconds: int = 60
    reconnect_max_seconds: float = 30.0  # the backoff's cap
    blocked_connection_timeout_seconds: float = 300.0  # a connection the broker blocks this long is dropped
    consumer_check_seconds: float = 30.0  # how often a consumer checks that the broker still has it
    reconnect_initial_seconds: float = 1.0  # the first wait (never above the cap)


DEFAULT_OPTIONS = SessionOptions()


class ReconnectNow(Exception):
    """Drop the connection and connect (declare, subscribe) again at once, without backing off."""


def broker_urls(url: str) -> list[str]:
    """The brokers of AMQP_URL, in its order: one URL, or several separated by `;` (Settings checked them)."""
    return [part.strip() for part in url.split(";") if part.strip()]


def connection_parameters(url: str, options: SessionOptions) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    parameters.heartbeat = options.heartbeat_seconds
    parameters.blocked_connection_timeout = options.blocked_connection_timeout_seconds
    return parameters


def backoff(
    initial: float, cap: float, *, jitter: float = JITTER, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """The waits between attempts: initial, doubling up to cap, each cut by up to `jitter` of itself."""
    step = min(initial, cap)
    while True:
        yield step * (1.0 - jitter * rand())
        step = min(step * 2, cap)


class BrokerSession:
    """Connects, runs the caller's work on the connection, and reconnects when the broker fails it."""

    def __init__(self, url: str, options: SessionOptions, *, order: Callable[[list], None] = random.shuffle) -> None:
        """`url`: AMQP_URL (one broker or several, `;`-separated); `order` arranges them once (shuffled)."""
        self.options = options
        self.nodes = [connection_parameters(part, options) for part in broker_urls(url)]
        order(self.nodes)
        self._first = 0  # the node the next connect tries first
        passwords = {p.credentials.password for p in self.nodes if p.credentials.password}
        self._secrets = tuple({s for p in passwords for s in (p, urllib.parse.quote(p, safe=""))})
        self._established = False
        self.connects = 0  # connections opened since start; more than 1 means it reconnected
        self.node = ""  # host:port of the node of the last connection

    def connect(self) -> pika.BlockingConnection:
        """A connection to the first node that answers, from the one after the last connection's node
        on; the last node's error when none does (pika's AMQPConnectionError)."""
        error: pika.exceptions.AMQPConnectionError | None = None
        for step in range(len(self.nodes)):
            index = (self._first + step) % len(self.nodes)
            parameters = self.nodes[index]
            try:
                connection = pika.BlockingConnection(parameters)
            except pika.exceptions.AMQPConnectionError as exc:
                error = exc
                if len(self.nodes) > 1:
                    logger.warning(
                        "Broker {}:{} did not answer ({})", parameters.host, parameters.port, self._safe(exc)
                    )
                continue
            self._first = (index + 1) % len(self.nodes)
            self.node = f"{parameters.host}:{parameters.port}"
            logger.info("Connected to the broker at {}", self.node)
            return connection
        assert error is not None
        raise error

    def established(self) -> None:
        """Called by the work once it is up (consuming): the next failure backs off from the start."""
        self._established = True

    def run(
        self,
        work: Callable[[pika.BlockingConnection], T],
        *,
        stop: threading.Event,
        retry_on: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError,),
        on_error: Callable[[BaseException], str | None] = lambda exc: None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> T | None:
        """`work(connection)` until it returns (its value is returned) or `stop` is set (None).

        A `retry_on` error (the broker's) is logged and the work starts again on a new connection
        after the next backoff wait; ReconnectNow starts it again at once. `on_error(exc)` may raise
        (to give up) or return a message to log instead of the default one. `on_lost()` is called
        after every connection this session opened, however it ended; `work` closes nothing.
        """
        delays = self._backoff()
        while not stop.is_set():
            self._established = False
            connection = None
            try:
                connection = self.connect()
                self.connects += 1
                return work(connection)
            except ReconnectNow as exc:
                logger.error("{}; connecting and subscribing again", self._safe(exc))
                delays = self._backoff()
            except retry_on as exc:
                if stop.is_set():
                    break
                if self._established:
                    delays = self._backoff()
                delay = next(delays)
                self._log_failure(exc, on_error(exc), delay)
                stop.wait(delay)
            finally:
                if connection is not None:
                    _close(connection)
                    guarded_call(on_lost, name="on_disconnect")()
        return None

    def _backoff(self) -> Iterator[float]:
        return backoff(self.options.reconnect_initial_seconds, self.options.reconnect_max_seconds)

    def _log_failure(self, exc: BaseException, message: str | None, delay: float) -> None:
        if message is not None:
            logger.warning("{}; trying again in {:.0f} s", self._safe(message), delay)
        elif getattr(exc, "reply_code", None) == _PRECONDITION_FAILED:
            # A configuration error, not an outage: say so, and keep trying, so that the service
            # recovers once the queue or the settings are put right.
            logger.error(
                "The broker refused the topology ({}): a queue exists with other arguments; align "
                "DELIVERY_LIMIT and the queue names with it, or delete it; reconnecting in {:.0f} s",
                self._safe(exc),
                delay,
            )
        elif isinstance(exc, pika.exceptions.AMQPError):
            logger.warning("Broker unavailable ({}); reconnecting in {:.0f} s", self._safe(exc), delay)
        else:  # a bug in the work (retried only where the caller asked for it): keep its traceback
            logger.opt(exception=exc).error(
                "The broker session failed ({}); reconnecting in {:.0f} s", self._safe(exc), delay
            )

    def _safe(self, exc: BaseException | str) -> str:
        """The error's text without the password (and never empty)."""
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _close(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except pika.exceptions.AMQPError:
        pass  # already gone


def consuming_channel(
    connection: pika.BlockingConnection, *, prefetch: int, cancelled: threading.Event
) -> BlockingChannel:
    """A new channel to consume on: confirms on (progress events are published on it), at most `prefetch`
    unacked deliveries, and `cancelled` set when the broker cancels a consumer of it (the queue was deleted,
    or moved on failover: the worker then declares and subscribes again)."""
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=prefetch)
    channel.add_on_cancel_callback(lambda _frame: cancelled.set())
    return channel


def replace_closed(
    channel: BlockingChannel, open_channel: Callable[[], BlockingChannel], *, what: str
) -> BlockingChannel:
    """`channel` while it is open; once the broker closed it, says so and returns `open_channel()`.

    Only that channel goes: the connection's other channels (and the work they carry) go on. The
    deliveries held on the closed one return to their queue; the broker redelivers them.
    """
    if not channel.is_closed:
        return channel
    logger.error("The broker closed the channel of {}; opening a new one", what)
    return open_channel()


class PublishChannel:
    """The channel a client publishes on with confirms, apart from the channels it consumes on, and
    replaced once the broker refused a publish on it (`refused()`).

    Why: RabbitMQ 3.10 was seen to nack every later publish on a channel to a quorum queue whose
    leader's node died as that channel first published to it (4 of 4 over 15 s, the queue long since
    led from another node), while a new channel on the same node was confirmed at once. Consuming
    channels cannot be replaced so lightly: closing one returns every delivery it holds.
    Used on the connection's thread only, as every pika channel.
    """

    def __init__(self) -> None:
        self._channel: BlockingChannel | None = None

    def on(self, connection: pika.BlockingConnection) -> BlockingChannel:
        """The open publishing channel of `connection` (a new one after a refusal or a reconnect)."""
        channel = self._channel
        if channel is None or not channel.is_open or channel.connection is not connection:
            channel = self._channel = connection.channel()
            channel.confirm_delivery()
        return channel

    def refused(self) -> None:
        """The broker refused a publish on it: the next `on()` opens another."""
        channel, self._channel = self._channel, None
        try:
            if channel is not None and channel.is_open:
                channel.close()
        except pika.exceptions.AMQPError:
            pass  # its connection is gone: so is the channel


def probe_consumer(probe: BlockingChannel, channel: BlockingChannel, queue: str, tag: str, *, owner: str) -> bool:
    """Cancel the consumer `tag` of `channel` and tell whether the broker had it: True when the
    queue's consumer count dropped with the cancel (subscribe again on the same channel), False when
    it did not (the broker had lost it, or keeps a ghost of it: subscribe on a new channel, whose
    opening releases what the ghost holds).

    Why a cancel: there is no AMQP query for "does my consumer exist". consumer_count == 0 misses the
    delete-and-redeclare case (the new queue counts the ghost), and with several workers any other
    consumer hides ours. A race with another consumer of the queue (subscribing or cancelling between
    the two counts) can answer wrong once: False costs a needless new channel, True one more period.
    Call it only while the channel holds no delivery, so that a new channel costs nothing; a delivery
    arriving during the cancel goes back to the queue (pika rejects it). `probe` is a channel for
    passive declares: a missing queue closes it (ChannelClosedByBroker 404, raised before anything
    is cancelled; a queue that goes between the two counts answers False). A lost consumer is
    counted (RESUBSCRIBED) and logged, naming the `owner` ("worker", "gateway") it belonged to.
    """
    before = probe.queue_declare(queue, passive=True).method.consumer_count
    channel.basic_cancel(tag)
    try:
        present = probe.queue_declare(queue, passive=True).method.consumer_count < before
    except pika.exceptions.ChannelClosedByBroker:
        present = False
    if not present:
        RESUBSCRIBED.labels(queue=queue).inc()
        logger.warning(
            "The broker no longer delivers to this {}'s consumer of {} (the queue deleted and declared again?); "
            "subscribing on a new channel",
            owner,
            queue,
        )
    return present


def delivery_attempt(headers: dict) -> int:
    """Which delivery of its message this is (1 the first): quorum queues count them in x-delivery-count."""
    return int(headers.get("x-delivery-count") or 0) + 1


def _job_id(properties, body: bytes) -> str:
    """The job a message is about: its correlation or message id, else the body's job_id, else '-'."""
    for candidate in (getattr(properties, "correlation_id", None), getattr(properties, "message_id", None)):
        if candidate:
            return str(candidate)
    try:
        value = json.loads(body).get("job_id")
    except (ValueError, AttributeError, TypeError):
        value = None
    return str(value) if value else "-"


def guarded(callback: Callable, *, name: str, requeue_delay: float | None = None) -> Callable:
    """Wrap a basic_consume callback `(channel, method, properties, body)` run on the connection thread.

    An exception is logged with the message's job id and counted (callback=name), and the thread goes on:
    - `requeue_delay` None: the message was auto-acked; it is dropped (for messages whose loss is harmless);
    - else the message is nacked back to its queue that many seconds later (on the connection's timer,
      not at once: an immediate requeue comes straight back); the queue's delivery limit bounds the retries.
    A lost connection propagates: the session reconnects and the broker requeues what was unacked.
    """

    @functools.wraps(callback)
    def on_message(channel: BlockingChannel, method, properties, body: bytes) -> None:
        try:
            callback(channel, method, properties, body)
        except pika.exceptions.AMQPConnectionError:
            raise
        except Exception:
            job_id = _job_id(properties, body)
            CALLBACK_ERRORS.labels(callback=name).inc()
            with logger.contextualize(job_id=job_id):
                if requeue_delay is None:
                    logger.exception("The {} callback failed on a message of job {}; it is dropped", name, job_id)
                    return
                logger.exception(
                    "The {} callback failed on a message of job {}; it is requeued in {:.0f} s",
                    name,
                    job_id,
                    requeue_delay,
                )
            requeue_later(channel, method.delivery_tag, requeue_delay, name=name)

    return on_message


def guarded_call(callback: Callable[[], None], *, name: str) -> Callable[[], None]:
    """Wrap a callback with no message (add_callback_threadsafe, call_later): an exception is logged and
    counted, and the thread goes on; a lost connection propagates."""

    @functools.wraps(callback)
    def call() -> None:
        try:
            callback()
        except pika.exceptions.AMQPConnectionError:
            raise
        except Exception:
            CALLBACK_ERRORS.labels(callback=name).inc()
            logger.exception("The {} callback failed; carrying on", name)

    return call


def requeue_later(channel: BlockingChannel, tag: int, delay: float, *, name: str) -> None:
    """Nack the delivery `tag` back to its queue `delay` seconds from now, on the connection's timer (an
    immediate requeue comes straight back: a tight loop that spends the delivery limit in moments)."""
    channel.connection.call_later(delay, guarded_call(lambda: _requeue(channel, tag), name=name))


def _requeue(channel: BlockingChannel, tag: int) -> None:
    if channel.is_open:  # else the broker requeued it with the channel
        channel.basic_nack(tag, requeue=True)
