"""Jobs on their threads: a delivery taken on the connection's thread runs on a pool (the bulk lane's or
the interactive lane's), and its settlement is handed back to the connection's thread (settle.py), the only
one that touches channels. Progress events travel the same way, and may be dropped with a lost connection.
"""

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pika
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.messages import ProgressEvent
from worker.pipeline import Lane
from worker.service import session
from worker.service.jobs import JobHandler
from worker.service.outcome import Delivery, Outcome
from worker.service.settle import Handoffs, Settler, threadsafe


def _published_at(headers: dict, timestamp: int | None) -> float | None:
    """When the job was published: the exact header if the publisher set it, else the AMQP timestamp."""
    exact_ms = headers.get("x-published-at-ms")
    if isinstance(exact_ms, int):
        return exact_ms / 1000.0
    return float(timestamp) if timestamp else None


class JobThreads:
    """Runs each job delivery on its lane's pool and settles it on the connection's thread; counts the
    jobs in flight (taken, not yet settled or given back)."""

    def __init__(
        self,
        handler: JobHandler,
        settler: Settler,
        handoffs: Handoffs,
        *,
        slots: dict[Lane, int],
        stopping: threading.Event,
        on_taken: Callable[[Lane], None],
        on_settled: Callable[[Delivery, BlockingChannel], None],
    ) -> None:
        self._handler = handler
        self._settler = settler
        self._handoffs = handoffs
        self._pools = {
            "bulk": ThreadPoolExecutor(max_workers=slots["bulk"], thread_name_prefix="job"),
            "interactive": ThreadPoolExecutor(max_workers=slots["interactive"], thread_name_prefix="interactive-job"),
        }
        self._stopping = stopping  # a stop cuts a retry's back-off short
        self._on_taken = on_taken
        self._on_settled = on_settled
        self._lock = threading.Lock()  # job threads decrement too, when a connection was lost
        self.in_flight = 0

    def on_message(
        self, connection: pika.BlockingConnection, lane: Lane, channel: BlockingChannel, method, properties, body: bytes
    ) -> None:
        """A basic_consume callback (with `connection` and `lane` bound): the job goes to its lane's pool."""
        headers = properties.headers or {}
        delivery = Delivery(
            body=body,
            attempt=session.delivery_attempt(headers),
            published_at=_published_at(headers, properties.timestamp),
            message_id=properties.message_id,
            lane=lane,
        )
        self._count(+1)
        self._on_taken(lane)
        self._pools[lane].submit(self._work, connection, channel, method.delivery_tag, properties.reply_to, delivery)

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True)

    def _work(
        self,
        connection: pika.BlockingConnection,
        channel: BlockingChannel,
        tag: int,
        reply_to: str | None,
        delivery: Delivery,
    ) -> None:
        def progress(event: ProgressEvent) -> None:
            publish = functools.partial(self._settler.progress, channel, event)
            threadsafe(connection, session.guarded_call(publish, name="job_progress"))

        outcome = self._handler.handle(delivery, progress=progress)
        if outcome.action == "retry" and outcome.retry_delay:
            # Back off on this job thread, not the connection thread; a stop cuts the wait short.
            self._stopping.wait(outcome.retry_delay)
        settle = functools.partial(self._settle, channel, tag, reply_to, delivery, outcome)
        if not self._handoffs.hand(connection, settle, undo=lambda: self._count(-1)):
            logger.warning("Connection lost while the job ran; the broker will redeliver it")

    def _settle(
        self, channel: BlockingChannel, tag: int, reply_to: str | None, delivery: Delivery, outcome: Outcome
    ) -> None:
        try:
            self._settler.job(channel, tag, reply_to, delivery.body, outcome)
        finally:
            self._count(-1)
            self._on_settled(delivery, channel)

    def _count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
