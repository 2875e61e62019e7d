"""What the worker asks the broker about its own consumers and queues, on the connection's thread.

- `ConsumerCheck`: a queue deleted and declared again at once cancels nobody: the broker keeps a ghost
  of the consumer that swallows deliveries. Every `consumer_check_seconds`, each consumer that holds no
  delivery and got none since the last check is probed (session.probe_consumer) and, when the broker had
  lost it, subscribed again on a new channel. A busy consumer is left alone, so that no delivery races
  the probe's cancel (and a ghost gets no deliveries, so an idle consumer is the only suspect).
- `DepthSampler`: ready messages on the jobs and chunk queues every few seconds, for /metrics
  (autoscalers read the broker's own).
All of them ask through one `ProbeChannel`: passive declares close their channel when the queue is
missing, so that channel is kept apart from the consuming ones and opened again when needed.
"""

import threading
import time
from collections.abc import Iterable
from typing import Protocol

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from worker.service import publisher, session

_DEPTH_EVERY_SECONDS = 5.0


class ProbeChannel:
    """A channel for passive declares, which close their channel when the queue is missing."""

    def __init__(self) -> None:
        self._channel: BlockingChannel | None = None

    def forget(self) -> None:
        """The connection is new (or the broker closed the channel): open another when next asked."""
        self._channel = None

    def depth(self, connection: pika.BlockingConnection, queue: str) -> int:
        """Ready messages on `queue`; ChannelClosedByBroker (404 when the queue is missing) is raised."""
        try:
            return publisher.queue_depth(self._get(connection), queue)
        except pika.exceptions.ChannelClosedByBroker:
            self._channel = None
            raise

    def consumer_present(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, queue: str, tag: str
    ) -> bool | None:
        """session.probe_consumer, which cancels the consumer: True when the broker had it, False when
        not (subscribe on a new channel), None when the queue is missing and nothing was cancelled (the
        broker's Basic.Cancel, or the next declare, handles that)."""
        try:
            return session.probe_consumer(self._get(connection), channel, queue, tag, owner="worker")
        except pika.exceptions.ChannelClosedByBroker:
            self._channel = None
            return None

    def _get(self, connection: pika.BlockingConnection) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self._channel = connection.channel()
        return self._channel


class Watched(Protocol):
    """A consumer the check may probe (the bulk, interactive and chunk-task consumers)."""

    channel: BlockingChannel | None
    queue: str
    tag: str | None

    def idle_since(self, moment: float) -> bool:
        """Subscribed on an open channel, holding no delivery, none taken since `moment` (monotonic)."""

    def resubscribe(self, connection: pika.BlockingConnection, cancelled: threading.Event, *, present: bool) -> None:
        """After the probe's cancel: on the same channel when `present`, else on a new one."""


class ConsumerCheck:
    """Every `period` seconds, probes the idle consumers and subscribes each one again (see the module)."""

    def __init__(self, probe: ProbeChannel, period: float) -> None:
        self._probe = probe
        self._period = period
        self._at = 0.0

    def start(self) -> None:
        """The consumers were just subscribed: the first check comes a period from now."""
        self._at = time.monotonic()

    def run(
        self, connection: pika.BlockingConnection, cancelled: threading.Event, consumers: Iterable[Watched | None]
    ) -> None:
        previous = self._at
        if time.monotonic() - previous < self._period:
            return
        self._at = time.monotonic()
        for consumer in consumers:  # in turn: a probe's round trip may bring the next one a delivery
            if consumer is None or not consumer.idle_since(previous):
                continue
            present = self._probe.consumer_present(connection, consumer.channel, consumer.queue, consumer.tag)
            if present is not None:
                consumer.resubscribe(connection, cancelled, present=present)


class DepthSampler:
    """Ready messages per queue in `queue_depths` (one dict, updated in place), sampled every few seconds."""

    def __init__(self, probe: ProbeChannel, queues: Iterable[str | None]) -> None:
        self._probe = probe
        self._queues = [queue for queue in queues if queue]
        self._at = 0.0
        self.queue_depths: dict[str, int] = {}

    def sample(self, connection: pika.BlockingConnection) -> None:
        if time.monotonic() - self._at < _DEPTH_EVERY_SECONDS:
            return
        self._at = time.monotonic()
        for queue in self._queues:
            try:
                self.queue_depths[queue] = self._probe.depth(connection, queue)
            except pika.exceptions.ChannelClosedByBroker:
                pass  # the queue is gone: the consumer's cancel is handled elsewhere
