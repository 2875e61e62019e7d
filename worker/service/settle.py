"""Settling deliveries: what the connection thread does with an Outcome once a job or chunk task is done.

Everything here runs on the thread that owns the connection (pika channels are not thread-safe):
- a job: publish its result (the broker's confirm awaited), mark it published, send the `completed`
  event, and only then ack; or dead-letter it with its failed result; or requeue it for a retry;
- a chunk task: reply to its job's gather queue, dead-letter a bad task, then ack.
A refused publish or a bug while settling requeues the delivery (its delivery count bounds the
retries); a lost connection is raised to the session, and the broker redelivers what was unacked.
"""

import itertools
import threading
from collections.abc import Callable

import pika
import pika.exceptions
from loguru import logger
from pika.adapters.blocking_connection import BlockingChannel

from worker.messages import ProgressEvent
from worker.service import publisher, session
from worker.service.chunks import ChunkDelivery, ChunkOutcome
from worker.service.jobs import JobHandler
from worker.service.outcome import Outcome
from worker.service.publisher import Topology

CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
)


class Settler:
    """Carries out job and chunk-task outcomes on a channel."""

    def __init__(
        self,
        topology: Topology,
        handler: JobHandler,
        *,
        on_settled: Callable[[Outcome], None],
        on_chunk_settled: Callable[[ChunkOutcome], None],
        requeue_delay: float = 5.0,
    ) -> None:
        """`requeue_delay`: how long a delivery whose settling failed is held before it goes back."""
        self._requeue_delay = requeue_delay
        self._topology = topology
        self._handler = handler
        self._on_settled = on_settled
        self._on_chunk_settled = on_chunk_settled
        # Results, replies and dead letters go out on a channel of their own (session.PublishChannel);
        # acks stay on the channel of their delivery, as they must.
        self._publishing = session.PublishChannel()

    def job(self, channel: BlockingChannel, tag: int, reply_to: str | None, body: bytes, outcome: Outcome) -> None:
        try:
            if not channel.is_open:
                logger.warning("Channel closed before job settled; the broker will redeliver it")
                return
            self._apply(channel, tag, reply_to, body, outcome)
            self._on_settled(outcome)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            # Say a quorum queue electing a new leader (its node died): refused for a few seconds.
            self._publishing.refused()
            logger.error("Broker refused the result ({}); requeueing the job in {:.0f} s", exc, self._requeue_delay)
            session.requeue_later(channel, tag, self._requeue_delay, name="settle_job")
        except CONNECTION_ERRORS:
            raise  # the connection is gone: reconnect; the broker redelivers the job
        except Exception:  # a bug while settling: keep consuming; the delivery limit bounds the retries
            logger.exception("Settling a job failed; requeueing it in {:.0f} s", self._requeue_delay)
            session.requeue_later(channel, tag, self._requeue_delay, name="settle_job")

    def _apply(self, channel: BlockingChannel, tag: int, reply_to: str | None, body: bytes, outcome: Outcome) -> None:
        t = self._topology
        out = self._publishing.on(channel.connection)
        if outcome.action == "complete":
            publisher.publish_result(out, t, outcome.result, reply_to=reply_to)
            self._handler.mark_published(outcome.result)
            self.progress(channel, ProgressEvent(job_id=outcome.result.job_id, stage="completed", percent=100.0))
            channel.basic_ack(tag)
            publisher.delete_gather(channel, t, outcome.result.job_id)  # a fanned-out job's chunk results
        elif outcome.action == "dead_letter":
            publisher.publish_result(out, t, outcome.result, reply_to=reply_to)
            publisher.dead_letter(out, t, body, outcome.result)
            channel.basic_ack(tag)
            publisher.delete_gather(channel, t, outcome.result.job_id)
        elif outcome.action == "retry":
            channel.basic_nack(tag, requeue=True)
        else:
            channel.basic_ack(tag)

    def progress(self, channel: BlockingChannel, event: ProgressEvent) -> None:
        if channel.is_open:
            publisher.publish_progress(channel, self._topology, event)

    def chunk(self, channel: BlockingChannel, tag: int, delivery: ChunkDelivery, outcome: ChunkOutcome) -> None:
        """Reply to the gather queue, dead-letter a bad task, ack."""
        try:
            if not channel.is_open:
                logger.warning("Channel closed before the chunk task settled; the broker will redeliver it")
                return
            out = self._publishing.on(channel.connection)
            if outcome.reply is not None and delivery.reply_to:
                try:
                    publisher.publish_gather(out, delivery.reply_to, outcome.reply)
                except pika.exceptions.UnroutableError:
                    logger.warning("Job {} ended while its chunk ran; the chunk's result is dropped", outcome.job_id)
            if outcome.action == "dead_letter" and outcome.error is not None:
                publisher.dead_letter_chunk(
                    out, self._topology, delivery.body, delivery.headers, outcome.job_id, outcome.error
                )
            channel.basic_ack(tag)
            self._on_chunk_settled(outcome)
        except CONNECTION_ERRORS:
            raise
        except pika.exceptions.NackError as exc:  # the gather queue electing a new leader, say
            self._publishing.refused()
            logger.error("Broker refused the chunk's result ({}); requeueing the task in {:.0f} s", exc,
                         self._requeue_delay)  # fmt: skip
            session.requeue_later(channel, tag, self._requeue_delay, name="settle_chunk")
        except Exception:  # a bug while settling: the task comes back; its delivery count bounds the retries
            logger.exception("Settling a chunk task failed; requeueing it in {:.0f} s", self._requeue_delay)
            session.requeue_later(channel, tag, self._requeue_delay, name="settle_chunk")


class Handoffs:
    """Settlements handed from job threads to the connection's thread, until they run.

    pika drops the callbacks of a connection that dies before running them. A broker node that stops
    answering (paused, cut off) keeps the socket open until the heartbeat gives up, so a job finishing
    meanwhile hands its settlement over successfully, and it never runs. `lost()` (when the connection
    has ended) undoes those: the work they settled is no longer counted in flight (the broker redelivers
    their deliveries), else a stopping worker would wait for them forever.
    """

    def __init__(self) -> None:
        self._pending: dict[int, Callable[[], None]] = {}  # key -> undo
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def hand(self, connection: pika.BlockingConnection, callback: Callable[[], None], undo: Callable[[], None]) -> bool:
        """Run `callback` on the connection's thread; False (and `undo()` done) when the connection is gone."""
        key = next(self._keys)

        def run() -> None:
            with self._lock:
                if self._pending.pop(key, None) is None:
                    return  # undone by lost(): its delivery is the broker's again
            callback()

        with self._lock:
            self._pending[key] = undo
        if threadsafe(connection, run):
            return True
        with self._lock:
            self._pending.pop(key, None)
        undo()
        return False

    def lost(self) -> int:
        """The connection has ended: undo every settlement handed to it that did not run; how many."""
        with self._lock:
            undos, self._pending = list(self._pending.values()), {}
        for undo in undos:
            undo()
        return len(undos)


def threadsafe(connection: pika.BlockingConnection, callback: Callable[[], None]) -> bool:
    """Hand `callback` to the connection's thread; False when the connection is gone (what it would have
    done is then dropped: a progress event or a probe, whose loss is harmless; settlements go through
    Handoffs, which undoes them)."""
    try:
        connection.add_callback_threadsafe(callback)
        return True
    except CONNECTION_ERRORS:
        return False
