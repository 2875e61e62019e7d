"""Two lanes into the one shared transcriber: interactive work goes before bulk work.

A user waiting on a synchronous request should not wait behind the chunks of every bulk job a worker
holds. The transcriber takes chunks, not jobs, so bulk work yields per whisper call (a chunk, or a
re-read tail of one): while an interactive job is being decoded or transcribed (`job`), a bulk call about
to start waits (`turn`); interactive calls never wait here. A worker busy with a long bulk job therefore
runs an interactive job's chunks as soon as the bulk calls already running finish, not after the whole
bulk job, and the interactive job's decoding has the CPUs too.

Bulk work is never starved: a bulk call that has waited `bulk_max_wait_seconds` starts anyway, beside
the interactive work (a bulk job advances by at least one whisper call per that many seconds, however
busy the interactive lane is). Only the order is decided here: the transcriber's own slots bound the
calls at once, so no compute thread is added.
"""

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Literal

Lane = Literal["interactive", "bulk"]


class Lanes:
    """The order of whisper calls across every job of the process; one per process, shared."""

    def __init__(self, bulk_max_wait_seconds: float = 60.0) -> None:
        self.bulk_max_wait_seconds = bulk_max_wait_seconds
        self._changed = threading.Condition()
        self._interactive = 0  # interactive jobs being decoded or transcribed now
        self.bulk_waits = 0  # bulk calls that waited for the interactive lane (logs, tests)

    @contextlib.contextmanager
    def job(self, lane: Lane) -> Iterator[None]:
        """Around a job's decoding and transcription: an interactive one holds bulk calls back."""
        if lane != "interactive":
            yield
            return
        with self._changed:
            self._interactive += 1
        try:
            yield
        finally:
            with self._changed:
                self._interactive -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def turn(self, lane: Lane) -> Iterator[None]:
        """Around one whisper call: a bulk one starts once no interactive job is held (or it waited long enough)."""
        if lane == "bulk":
            self._wait()
        yield

    @property
    def interactive_jobs(self) -> int:
        return self._interactive

    def _wait(self) -> None:
        deadline = time.monotonic() + self.bulk_max_wait_seconds
        with self._changed:
            if self._interactive:
                self.bulk_waits += 1
            while self._interactive and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
