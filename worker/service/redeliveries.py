"""A redelivered job answered from this process's memory instead of being transcribed again.

Two cases, both in one process: the job's result was computed but never published (the connection
dropped first, or settling failed), so the redelivery is answered with that result; or the job is
still running from an earlier delivery (its channel was closed under it), so the redelivery waits
for that run. A job whose result was published is recognised by its marker on disk instead
(worker/service/results.py).
"""

import threading

from worker.messages import Result

MAX_UNPUBLISHED = 64  # results kept for redeliveries after a lost publish (oldest dropped first)


class Redeliveries:
    """Results not yet published and jobs being processed now, by job id; safe across job threads."""

    def __init__(self) -> None:
        # Completed results whose publish did not happen (the connection dropped first, or
        # settling failed): the redelivered job is answered from here, not transcribed again.
        self._unpublished: dict[str, Result] = {}
        # Jobs being processed now: a redelivery of one (its channel was closed under it) waits for
        # that run's result instead of transcribing the same audio a second time.
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, job_id: str) -> tuple[Result | None, threading.Event | None]:
        """The job's unpublished result, or the event its running delivery sets when done; when there is
        neither, the job is now running here, and the caller must call `finish` once it ends."""
        with self._lock:
            waiting = self._unpublished.get(job_id)
            running = self._running.get(job_id)
            if waiting is None and running is None:
                self._running[job_id] = threading.Event()
        return waiting, running

    def finish(self, job_id: str) -> None:
        """The run `start` began has ended (a result kept or not): release any redelivery waiting for it."""
        with self._lock:
            self._running.pop(job_id).set()

    def keep(self, result: Result) -> None:
        """A completed result, until `published` says the broker has it."""
        with self._lock:
            self._unpublished[result.job_id] = result
            # Bounded: an entry whose redelivery went to another worker is never claimed here.
            while len(self._unpublished) > MAX_UNPUBLISHED:
                self._unpublished.pop(next(iter(self._unpublished)))

    def published(self, job_id: str) -> None:
        with self._lock:
            self._unpublished.pop(job_id, None)
