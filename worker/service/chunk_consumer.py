"""The worker's consumer of chunk tasks (fan-out: a long job's chunks, spread over every worker).

On a channel of its own (prefetch = `slots`, the process's whisper states), onto a pool of as many
threads. A task runs on a pool thread (ChunkHandler), then its settlement (the reply to the job's gather
queue, then the ack) is handed to the connection's thread, the only one that touches channels. Taking a
task pauses the worker's jobs consumer (`on_taken`: chunk tasks come first, see bulk.py).
"""

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pika
import pika.exceptions
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.service import session
from worker.service.chunks import ChunkDelivery, ChunkHandler
from worker.service.probes import ProbeChannel
from worker.service.settle import Handoffs, Settler, threadsafe

# Take jobs again only once no chunk task has been held for this long.
_QUIET_SECONDS = 1.0


class ChunkConsumer:
    """Subscribes to the chunk queue and runs its tasks on a pool; counts those in flight."""

    def __init__(
        self,
        queue: str,
        handler: ChunkHandler,
        slots: int,
        *,
        settler: Settler,
        handoffs: Handoffs,
        probe: ProbeChannel,
        on_taken: Callable[[], None],
        requeue_delay: float,
    ) -> None:
        self.queue = self.tag = queue  # its consumer tag is the queue's name
        self._handler = handler
        self._slots = slots
        self._settler = settler
        self._handoffs = handoffs
        self._probe = probe
        self._on_taken = on_taken
        self._requeue_delay = requeue_delay
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="chunk-task")
        self._lock = threading.Lock()  # pool threads decrement too, when a connection was lost
        self.channel: BlockingChannel | None = None
        self.in_flight = 0
        self._last = 0.0  # when a task was last taken or settled (monotonic)

    def open(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> BlockingChannel:
        """A new channel, subscribed."""
        channel = session.consuming_channel(connection, prefetch=self._slots, cancelled=cancelled)
        self.channel = channel
        self._subscribe(connection)
        logger.info("Taking chunk tasks from {} ({} at a time)", self.queue, self._slots)
        return channel

    def reopen_if_closed(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> None:
        session.replace_closed(
            self.channel,
            lambda: self.open(connection, cancelled),
            what=f"{self.in_flight} chunk task(s) unsettled (held longer than the broker's consumer_timeout? "
            "see docs/operations.md)",
        )

    def quiet(self) -> bool:
        """No task held, none for a moment: the worker may take jobs again."""
        return not self.in_flight and time.monotonic() - self._last >= _QUIET_SECONDS

    def idle_since(self, moment: float) -> bool:
        return not self.in_flight and self._last < moment and self.channel.is_open

    def resubscribe(self, connection: pika.BlockingConnection, cancelled: threading.Event, *, present: bool) -> None:
        """After the consumer check's cancel: on the same channel, or on a new one when the broker had
        lost the consumer."""
        if present:
            self._subscribe(connection)
        else:
            self.channel.close()
            self.open(connection, cancelled)

    def stop(self) -> None:
        """No more tasks (the worker is stopping); those held finish."""
        self.channel.basic_cancel(self.queue)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    def _subscribe(self, connection: pika.BlockingConnection) -> None:
        on_chunk = functools.partial(self._on_chunk, connection)
        self.channel.basic_consume(
            self.queue,
            session.guarded(on_chunk, name="chunk_delivery", requeue_delay=self._requeue_delay),
            consumer_tag=self.queue,
        )

    def _on_chunk(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, method, properties, body: bytes
    ) -> None:
        headers = properties.headers or {}
        delivery = ChunkDelivery(
            body=body, headers=headers, reply_to=properties.reply_to, attempt=session.delivery_attempt(headers)
        )
        self._count(+1)
        self._on_taken()  # chunk tasks first: a job already started finishes before this worker takes another
        self._pool.submit(self._work, connection, channel, method.delivery_tag, delivery)

    def _work(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, tag: int, delivery: ChunkDelivery
    ) -> None:
        outcome = self._handler.handle(delivery, functools.partial(self._gathering, connection))
        settle = functools.partial(self._settle, channel, tag, delivery, outcome)
        if not self._handoffs.hand(connection, settle, undo=lambda: self._count(-1)):
            logger.warning("Connection lost while a chunk task ran; the broker will redeliver it")

    def _gathering(self, connection: pika.BlockingConnection, queue: str) -> bool:
        """Whether a gather queue exists (asked on the connection thread); True when the broker cannot say."""
        answer: Future[bool] = Future()

        def probe() -> None:
            try:
                self._probe.depth(connection, queue)
                answer.set_result(True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                answer.set_result(exc.reply_code != 404)
            except Exception:
                answer.set_result(True)

        if not threadsafe(connection, probe):
            return True
        try:
            return answer.result(timeout=30)
        except TimeoutError:
            return True

    def _settle(self, channel: BlockingChannel, tag: int, delivery: ChunkDelivery, outcome) -> None:
        try:
            self._settler.chunk(channel, tag, delivery, outcome)
        finally:
            self._count(-1)

    def _count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self._last = time.monotonic()
