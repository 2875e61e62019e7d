"""The worker's consumer of the interactive queue (the lane for jobs someone waits on).

Beside the jobs consumer, on a channel of its own (its own prefetch, so a worker busy with bulk jobs
still takes an interactive one), never paused for chunk tasks (only by a stop), its jobs run on threads
of their own. The interactive job then goes before the bulk work at whisper-call granularity
(worker/pipeline/lanes.py).

Consumer priorities (RabbitMQ's `x-priority`) send an interactive job to an idle worker before a busy
one: the consumer subscribes with IDLE_PRIORITY while the worker runs no bulk job and BUSY_PRIORITY
while it does; the broker delivers to the highest-priority consumers that have room, and only then to
the others. The priority is changed (cancel, subscribe again) only while this consumer holds no
delivery, on the connection's thread (a delivery racing the cancel goes back to the queue, which counts
it as a delivery: at worst one attempt of DELIVERY_LIMIT). Quorum queues have no message priorities: a lane queue is what
puts a job ahead of the bulk backlog.
"""

import threading
import time
from collections.abc import Callable

import pika
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.service import session

IDLE_PRIORITY = 10
BUSY_PRIORITY = 0

OnMessage = Callable[[BlockingChannel, object, object, bytes], None]


class InteractiveConsumer:
    """Subscribes to the interactive queue and keeps its priority in step with the worker's load."""

    def __init__(self, queue: str, slots: int, *, requeue_delay: float) -> None:
        self.queue = queue
        self.slots = slots
        self.requeue_delay = requeue_delay  # a delivery whose callback failed goes back this much later
        self.channel: BlockingChannel | None = None
        self.held = 0  # deliveries taken, not yet settled (changed on the connection thread only)
        self.taken_at = 0.0  # the last delivery (monotonic): the ghost check leaves a busy consumer alone
        self.tag: str | None = None
        self._priority = IDLE_PRIORITY
        self._on_message: OnMessage | None = None

    def open(self, connection: pika.BlockingConnection, cancelled: threading.Event, on_message: OnMessage) -> None:
        """A new channel, subscribed (at the priority the worker's load calls for)."""
        channel = session.consuming_channel(connection, prefetch=self.slots, cancelled=cancelled)
        self.channel, self.held, self._on_message = channel, 0, on_message
        self._subscribe()
        logger.info("Taking interactive jobs from {} ({} at a time)", self.queue, self.slots)

    def reopen_if_closed(self, connection: pika.BlockingConnection, cancelled: threading.Event) -> None:
        """The broker closed the channel (a delivery held past its consumer_timeout): a new one; the jobs
        held on the old one settle as redeliveries (as the jobs consumer's do)."""
        if self.channel is not None and self.channel.is_closed:
            logger.error("The broker closed the channel of {} interactive job(s); opening a new one", self.held)
            self.open(connection, cancelled, self._on_message)

    def taken(self) -> None:
        self.held += 1
        self.taken_at = time.monotonic()

    def settled(self) -> None:
        self.held -= 1

    def prioritise(self, busy: bool) -> None:
        """Subscribe again at BUSY_PRIORITY while the worker runs bulk jobs, IDLE_PRIORITY when not
        (only while this consumer holds no delivery, so that none is returned to the queue)."""
        wanted = BUSY_PRIORITY if busy else IDLE_PRIORITY
        if wanted == self._priority or self.held or self.tag is None or not self.channel.is_open:
            return
        self.channel.basic_cancel(self.tag)
        self._priority = wanted
        self._subscribe()

    def stop(self) -> None:
        """No more interactive jobs (the worker is stopping); those held finish."""
        if self.tag is not None and self.channel is not None and self.channel.is_open:
            self.channel.basic_cancel(self.tag)
        self.tag = None

    def idle_since(self, moment: float) -> bool:
        """Subscribed on an open channel, holding no delivery, none taken since `moment` (the consumer check)."""
        return self.tag is not None and not self.held and self.taken_at < moment and self.channel.is_open

    def resubscribe(self, connection: pika.BlockingConnection, cancelled: threading.Event, *, present: bool) -> None:
        """After the consumer check's cancel (session.probe_consumer): on the same channel when the broker
        had the consumer, on a new one when it had lost it (a ghost holds the old channel's deliveries)."""
        if present:
            self._subscribe()
            return
        self.channel.close()
        self.open(connection, cancelled, self._on_message)

    def _subscribe(self) -> None:
        self.tag = self.channel.basic_consume(
            self.queue,
            session.guarded(self._on_message, name="interactive_delivery", requeue_delay=self.requeue_delay),
            arguments={"x-priority": self._priority},
        )
