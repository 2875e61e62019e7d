"""The worker's consumer of the jobs queue (bulk work), and its flow control.

On a channel of its own, with prefetch = the worker's concurrent jobs, so that the broker never hands a
worker more jobs than it runs. Chunk tasks come before new jobs (a job already started, fanned out over
every worker, finishes before new ones begin): while the worker holds a chunk task the consumer is
cancelled (`pause`), and it subscribes again once no chunk task has been held for a moment (`resume`).
A stop pauses it for good.
"""

import threading
import time
from collections.abc import Callable

import pika
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.service import session
from worker.service.lane import OnMessage


class BulkConsumer:
    """Subscribes to the jobs queue, pauses for chunk tasks and resumes after them."""

    def __init__(self, queue: str, prefetch: int, *, requeue_delay: float, busy: Callable[[], bool]) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self.requeue_delay = requeue_delay  # a delivery whose callback failed goes back this much later
        self.channel: BlockingChannel | None = None
        self.tag: str | None = None  # None while paused for chunk tasks (or not yet subscribed)
        self.taken_at = 0.0  # the last delivery (monotonic): the consumer check leaves a busy consumer alone
        self._busy = busy  # whether the worker holds any job (the consumer check waits until it holds none)
        self._on_message: OnMessage | None = None

    def open(self, connection: pika.BlockingConnection, cancelled: threading.Event, on_message: OnMessage) -> None:
        """A new channel, not yet subscribed (`subscribe`, or `resume` does it)."""
        channel = session.consuming_channel(connection, prefetch=self.prefetch, cancelled=cancelled)
        self.channel, self.tag, self._on_message = channel, None, on_message

    def reopen_if_closed(self, connection: pika.BlockingConnection, cancelled: threading.Event, held: int) -> None:
        """The broker closed the channel (a job held past its consumer_timeout): open another, which
        `resume` subscribes. Only that channel goes: chunk tasks running on theirs carry on, which a whole
        new connection would cut off (and a chunk cut off every time a held job's channel closes may never
        finish). The held jobs settle on their closed channel as redeliveries: a finished one's result is
        published when it comes back."""
        if not self.channel.is_closed:
            return
        session.replace_closed(
            self.channel,
            lambda: self.open(connection, cancelled, self._on_message),
            what=f"{held} job(s) unsettled (held longer than the broker's consumer_timeout? see docs/operations.md)",
        )
        logger.info("Consuming {} again", self.queue)

    def taken(self) -> None:
        self.taken_at = time.monotonic()

    def subscribe(self) -> None:
        self.tag = self.channel.basic_consume(
            self.queue, session.guarded(self._on_message, name="job_delivery", requeue_delay=self.requeue_delay)
        )

    def pause(self, held: int, *, stopping: bool) -> None:
        """Stop taking jobs (deliveries not yet dispatched go back to the queue); `held`: the bulk jobs the
        worker runs.

        Not while the channel holds as many jobs as its prefetch allows (unless stopping): no job can come
        then, and a cancelled consumer that still holds a delivery is one RabbitMQ 3.10's quorum queues were
        seen to forget when its node died (the delivery stayed checked out to it, on no live channel, even
        after the node came back). The worker pauses again once that job is done, if chunk tasks still run."""
        if held >= self.prefetch and not stopping:
            return
        if self.tag is not None and self.channel.is_open:
            self.channel.basic_cancel(self.tag)
            logger.debug("Not taking new jobs (chunk tasks come first, or the worker is stopping)")
        self.tag = None

    def resume(self, *, chunks_quiet: bool) -> None:
        """Take jobs again once no chunk task has been held for a moment."""
        if self.tag is None and chunks_quiet:
            self.subscribe()

    def idle_since(self, moment: float) -> bool:
        return self.tag is not None and not self._busy() and self.taken_at < moment and self.channel.is_open

    def resubscribe(self, connection: pika.BlockingConnection, cancelled: threading.Event, *, present: bool) -> None:
        """After the consumer check's cancel: on the same channel when the broker had the consumer, on a
        new one when it had lost it (a ghost holds the old channel's deliveries)."""
        if not present:
            self.channel.close()
            self.open(connection, cancelled, self._on_message)
        self.subscribe()
        if not present:
            logger.info("Consuming {} again", self.queue)
