"""A job's input: its URLs checked before any work, then its audio and its known speakers' clips fetched
into a scratch directory of its own, removed when the job's transcription is done with it.

The scratch directory is made under WORK_DIR, this process's directory (worker/service/scratch.py), so a
worker killed mid-job leaves nothing behind for long.
"""

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from worker.egress import NameNotResolved
from worker.messages import Job
from worker.pipeline import KnownVoice
from worker.service.inputs import Sources


@dataclass(frozen=True)
class Fetched:
    """A job's input on local disk, for as long as its scratch directory lives."""

    audio: Path
    known: tuple[KnownVoice, ...]
    scratch: Path  # the job's own: the pipeline's decoded audio and chunks go here too
    download_seconds: float


@dataclass(frozen=True)
class Intake:
    """Where a job's input comes from (`sources`) and where it is put (`work_dir`; None: the system's temp)."""

    sources: Sources
    work_dir: Path | None = None

    def check_urls(self, job: Job) -> None:
        """Reject a URL the worker may not contact before any work or connection (InputNotAllowed).

        A host that does not resolve now is left to the request itself (a transient DownloadFailed,
        or a callback warning); every request checks its URL again when it connects.
        """
        for url in (job.audio.url, *(k.audio.url for k in job.known_speakers), job.callback_url):
            if url is not None:
                try:
                    self.sources.egress.resolve(str(url))
                except NameNotResolved:
                    pass

    @contextlib.contextmanager
    def fetched(self, job: Job, emit: Callable[[str], None]) -> Iterator[Fetched]:
        """The job's audio and known speakers' clips, in a scratch directory removed on leaving the block;
        `emit` says "downloading" first when the audio is a URL."""
        with tempfile.TemporaryDirectory(prefix=f"input-{job.job_id}-", dir=self.work_dir) as scratch:
            download_started = time.perf_counter()
            if job.audio.url is not None:
                emit("downloading")
            audio = self.sources.fetch(job.audio, Path(scratch) / "input")
            known = self.sources.known_voices(job, Path(scratch))
            yield Fetched(audio, known, Path(scratch), time.perf_counter() - download_started)
