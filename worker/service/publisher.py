"""Topology and publishing on a pika channel (with the consumer, the only importers of pika).

Every function here runs on the connection's thread: pika channels are not thread-safe.
"""

from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

from worker.messages import ErrorInfo, ProgressEvent, Result
from worker.messages.fanout import ChunkTask, GatherMessage

JSON = "application/json"
FLAC = "audio/flac"


@dataclass(frozen=True)
class Topology:
    """Names of everything the worker declares."""

    jobs_queue: str
    results_queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    progress_exchange: str
    delivery_limit: int
    # Fan-out (None: off): chunk tasks of long jobs, served by every worker, and their dead letters.
    chunks_queue: str | None = None
    chunks_dead_letter_queue: str = ""
    # The interactive lane (None: off): jobs someone waits on (the gateway's synchronous requests), taken
    # ahead of the jobs queue's (worker/pipeline/lanes.py); dead letters go to the jobs' dead-letter queue.
    interactive_queue: str | None = None

    def gather_queue(self, job_id: str) -> str:
        """The queue where a fanned-out job's chunk results come back to its coordinator."""
        return f"{self.chunks_queue}.gathered.{job_id}"  # not ".gather.": that was a classic queue


def declare(channel: BlockingChannel, t: Topology) -> None:
    """Declare the topology; idempotent, so every worker does it at start.

    The jobs queue is a durable quorum queue: replicated, and it counts deliveries so that
    a job failing again and again is dead-lettered after `delivery_limit` attempts instead
    of looping forever.
    """
    channel.exchange_declare(t.dead_letter_exchange, exchange_type="direct", durable=True)
    _declare_dead_lettered(channel, t, t.jobs_queue, t.dead_letter_queue, t.delivery_limit)
    if t.interactive_queue:
        _declare_dead_lettered(channel, t, t.interactive_queue, t.dead_letter_queue, t.delivery_limit)
    channel.queue_declare(t.results_queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.exchange_declare(t.progress_exchange, exchange_type="topic", durable=True)
    if t.chunks_queue:
        # The chunk queue's broker-side limit is one above the worker's own, so that a chunk that killed
        # every worker that took it is failed by a worker (its job learns why) before the broker drops it.
        _declare_dead_lettered(channel, t, t.chunks_queue, t.chunks_dead_letter_queue, t.delivery_limit + 1)


def _declare_dead_lettered(channel: BlockingChannel, t: Topology, queue: str, dead: str, limit: int) -> None:
    """A durable quorum queue whose messages go to `dead` (through the dead-letter exchange) after `limit`
    deliveries; a quorum queue counts every requeue, consumer_timeout and scale-in ones included."""
    channel.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(dead, t.dead_letter_exchange, routing_key=queue)
    channel.queue_declare(
        queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": t.dead_letter_exchange,
            "x-dead-letter-routing-key": queue,
            "x-delivery-limit": limit,
        },
    )


def declare_gather(channel: BlockingChannel, queue: str, *, expires_seconds: float) -> int:
    """Declare a job's gather queue; returns how many messages it already holds (a previous coordinator's).

    A quorum queue, so that finished chunk results outlive a coordinator, a broker restart and, on a
    cluster, the node it was declared on (a classic queue is out of reach while its node is down, and
    the chunk results sent to it meanwhile are lost). It expires once no coordinator has used it for
    `expires_seconds` (a job that never came back leaves nothing).
    """
    ok = channel.queue_declare(
        queue, durable=True, arguments={"x-queue-type": "quorum", "x-expires": int(expires_seconds * 1000)}
    )
    return ok.method.message_count


def lock_gather(channel: BlockingChannel, queue: str) -> None:
    """Become the one coordinator of a gather queue: declare `<queue>.coordinator`, exclusive to this
    connection, which the broker deletes with it (also when its node dies). Another coordinator of the job
    holding it: ChannelClosedByBroker 405 RESOURCE_LOCKED. (A quorum queue ignores basic.consume's
    `exclusive` flag, so the lock is a queue of its own.)"""
    channel.queue_declare(f"{queue}.coordinator", exclusive=True)


def delete_gather(channel: BlockingChannel, t: Topology, job_id: str) -> None:
    """Drop a job's gather queue once its result is published (deleting a missing queue is a no-op)."""
    if t.chunks_queue:
        channel.queue_delete(t.gather_queue(job_id))


def queue_depth(channel: BlockingChannel, queue: str) -> int:
    """Messages ready in `queue` (a passive declare: raises ChannelClosedByBroker 404 when it is missing)."""
    return channel.queue_declare(queue, passive=True).method.message_count


def publish_chunk_task(channel: BlockingChannel, t: Topology, task: ChunkTask, audio: bytes, *, reply_to: str) -> None:
    """A chunk task: FLAC in the body, the task in the headers; confirmed like every persistent message."""
    properties = pika.BasicProperties(
        content_type=FLAC,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=f"{task.job_id}/{task.index}",
        correlation_id=task.job_id,
        reply_to=reply_to,
        headers=task.headers(),
    )
    channel.basic_publish("", t.chunks_queue, audio, properties, mandatory=True)


def publish_gather(channel: BlockingChannel, queue: str, message: GatherMessage) -> None:
    """To a gather queue; UnroutableError when it is gone (the job ended)."""
    channel.basic_publish("", queue, message.model_dump_json().encode(), _properties(message.job_id), mandatory=True)


def dead_letter_chunk(
    channel: BlockingChannel, t: Topology, body: bytes, headers: dict | None, job_id: str, error: ErrorInfo
) -> None:
    """Put a chunk task in the chunks' dead-letter queue, its own headers kept, the reason added."""
    headers = {**(headers or {}), "x-error-code": error.code, "x-error-message": error.message[:1000]}
    properties = pika.BasicProperties(
        content_type=FLAC, delivery_mode=pika.DeliveryMode.Persistent, correlation_id=job_id, headers=headers
    )
    channel.basic_publish(t.dead_letter_exchange, t.chunks_queue, body, properties, mandatory=True)


def _properties(job_id: str, *, headers: dict | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=JSON,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=job_id,
        correlation_id=job_id,
        headers=headers,
    )


def publish_result(channel: BlockingChannel, t: Topology, result: Result, *, reply_to: str | None) -> None:
    """Publish to the results queue (and the job's reply_to, if it still exists); returns once the
    broker confirmed. With confirms on, pika raises (UnroutableError, NackError) when the results
    queue did not take it.
    """
    body = result.model_dump_json().encode()
    channel.basic_publish("", t.results_queue, body, _properties(result.job_id), mandatory=True)
    if reply_to and reply_to != t.results_queue:
        # Best effort: the results queue is the record. A reply queue that is gone (its client left)
        # must not make the job fail or loop through requeues.
        channel.basic_publish("", reply_to, body, _properties(result.job_id), mandatory=False)


def dead_letter(channel: BlockingChannel, t: Topology, body: bytes, result: Result) -> None:
    """Put the original job body in the dead-letter queue with the reason in its headers."""
    error = result.error
    headers = {
        "x-job-id": result.job_id,
        "x-error-code": error.code if error else "Unknown",
        "x-error-message": (error.message if error else "")[:1000],
        "x-attempts": result.attempt,
    }
    channel.basic_publish(
        t.dead_letter_exchange, t.jobs_queue, body, _properties(result.job_id, headers=headers), mandatory=True
    )


def publish_progress(channel: BlockingChannel, t: Topology, event: ProgressEvent) -> None:
    """Progress is advisory: fanned out on a topic exchange, routing key = job id."""
    channel.basic_publish(
        t.progress_exchange,
        event.job_id,
        event.model_dump_json().encode(),
        pika.BasicProperties(content_type=JSON, correlation_id=event.job_id),
    )


def publish_job(
    channel: BlockingChannel,
    t: Topology,
    body: bytes,
    job_id: str,
    *,
    reply_to: str | None = None,
    published_at: float | None = None,
    interactive: bool = False,
) -> None:
    """What an upstream API does: a persistent JSON job on the jobs queue (used by cmd/enqueue), or on
    the interactive queue when asked (and the topology has one).

    `published_at` (epoch seconds) goes in the AMQP timestamp, which holds whole seconds only,
    and in milliseconds in an `x-published-at-ms` header (AMQP tables carry no floats), from
    which the worker measures queue wait.
    """
    headers = {"x-published-at-ms": round(published_at * 1000)} if published_at is not None else None
    properties = _properties(job_id, headers=headers)
    properties.reply_to = reply_to
    properties.timestamp = int(published_at) if published_at is not None else None
    queue = t.interactive_queue if interactive and t.interactive_queue else t.jobs_queue
    channel.basic_publish("", queue, body, properties, mandatory=True)
