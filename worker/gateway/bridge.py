"""The broker bridge: what the gateway's broker thread hands to the requests on the event loop.

Results and progress arrive on the broker's thread (pika's); requests wait on the event loop. Each
hand-over goes through `loop.call_soon_threadsafe`. What is owed to whom:
- `Waiters`: a request that waits for its job's result (/v1/audio/*) awaits a future; the result
  resolves it. Its reply waits on this process's durable reply queue while the broker connection is
  down, so a lost connection fails the waiting requests (503) only when it is not back within a grace
  (GATEWAY_PUBLISH_TIMEOUT_SECONDS): a cluster's other node takes over in a second or two, and a
  broker down for longer should not hold requests until their timeout (the job itself goes on; its
  upload expires with its TTL).
- `Subscribers`: the SSE streams of this process, per job id.
- `Bridge`: the broker client's callbacks: count a finished job in its tenant's usage (usage.py); for
  async jobs, record the result or the progress in the job records, then tell the streams. A database
  error raises: the broker session's guard requeues the result later (or drops a progress event), and
  the thread lives on. A waiting request's result is answered even when the database cannot count it.
"""

import asyncio
import collections
import threading

from loguru import logger
from sqlalchemy.exc import SQLAlchemyError

from worker.errors import BrokerUnavailable
from worker.gateway.store import JobStore, dumps
from worker.gateway.uploads import UploadStore
from worker.gateway.usage import UsageBook
from worker.messages import ProgressEvent, Result

MAX_OWNERS = 100_000


class Waiters:
    """Job id -> the future its request awaits."""

    def __init__(self, uploads: UploadStore) -> None:
        self._uploads = uploads
        self._futures: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future, tuple[str, ...]]] = {}
        self._lock = threading.Lock()  # _futures: the event loop, the broker's thread and the grace timer
        # Job id -> its tenant, until the result comes (also after its request gave up): whose usage it is.
        self._owners: collections.OrderedDict[str, str] = collections.OrderedDict()

    def expect(self, job_id: str, owner: str, *tokens: str) -> asyncio.Future:
        """The future of `job_id`'s result, made for tenant `owner`; its uploads (`tokens`: the audio, known
        speakers' clips) go with it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._futures[job_id] = (loop, future, tokens)
        self._owners[job_id] = owner
        while len(self._owners) > MAX_OWNERS:  # results that never came (a purged queue): forgotten
            self._owners.popitem(last=False)
        return future

    def owner_of(self, job_id: str) -> str | None:
        """The tenant of a result arriving now (once)."""
        return self._owners.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._futures.pop(job_id, None)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._futures

    @property
    def waiting(self) -> int:
        return len(self._futures)

    def resolve(self, result: Result) -> None:
        """A result on this process's reply queue (the broker's thread)."""
        with self._lock:
            entry = self._futures.pop(result.job_id, None)
        if entry is None:
            return  # its request gave up (504, or the connection was lost): the upload expires
        loop, future, tokens = entry
        for token in tokens:
            self._uploads.delete(token)
        loop.call_soon_threadsafe(_settle, future, result, None)

    def fail_unless_back(self, connected: threading.Event, grace_seconds: float) -> None:
        """The broker connection was lost (the broker's thread): every request still waiting gets 503 when
        `connected` is not set again `grace_seconds` from now."""
        timer = threading.Timer(grace_seconds, lambda: None if connected.is_set() else self.fail_all())
        timer.daemon = True
        timer.start()

    def fail_all(self) -> None:
        """Every waiting request gets 503 now."""
        with self._lock:
            entries, self._futures = self._futures, {}
        for job_id, (loop, future, _tokens) in entries.items():
            error = BrokerUnavailable(f"the broker connection was lost while job {job_id} waited for its result")
            loop.call_soon_threadsafe(_settle, future, None, error)


def _settle(future: asyncio.Future, result: Result | None, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Subscribers:
    """SSE streams of this process, per job id."""

    def __init__(self) -> None:
        self._queues: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = collections.defaultdict(list)

    def subscribe(self, job_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[job_id].append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        self._queues[job_id] = [(loop, q) for loop, q in self._queues[job_id] if q is not queue]
        if not self._queues[job_id]:
            del self._queues[job_id]

    def send(self, job_id: str, event: str, data: str) -> None:
        for loop, queue in list(self._queues.get(job_id, ())):
            loop.call_soon_threadsafe(queue.put_nowait, (event, data))


class Bridge:
    """The broker client's callbacks (all on the broker's thread)."""

    def __init__(self, store: JobStore, uploads: UploadStore, usage: UsageBook) -> None:
        self.store = store
        self.uploads = uploads
        self.usage = usage
        self.waiters = Waiters(uploads)
        self.subscribers = Subscribers()

    def on_result(self, result: Result) -> None:
        """A result on this process's reply queue: counted for its tenant, then handed to its request."""
        owner = self.waiters.owner_of(result.job_id)
        try:
            if owner is not None:
                self.usage.charge(owner, result)
        except SQLAlchemyError as exc:
            logger.error("Job {} of tenant {} could not be counted in its usage: {}", result.job_id, owner, exc)
        self.waiters.resolve(result)

    def on_async_result(self, result: Result) -> None:
        record = self.store.finish(result)  # raises while the database is down: the guard requeues it
        if record is None:
            return  # another gateway's job (a shared queue, a foreign database): nothing to record
        if record.owner is not None:
            self.usage.charge(record.owner, result)  # counted once, whatever the deliveries
        if record.upload_token:
            self.uploads.delete(record.upload_token)
        self.subscribers.send(result.job_id, record.state, dumps(record))

    def on_progress(self, event: ProgressEvent) -> None:
        if event.stage in ("completed", "failed"):
            return  # the result itself ends the stream
        # A request of this process that streams its answer (it waits: no record), else an async job's.
        if event.job_id in self.waiters or self.store.progress(event):
            self.subscribers.send(event.job_id, "progress", event.model_dump_json())
