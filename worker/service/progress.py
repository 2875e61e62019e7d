"""A job's progress as ProgressEvents: the pipeline's stages and each chunk transcribed.

The consumer's sink hands each event to the connection thread, which publishes it on the progress
exchange (worker/service/settle.py).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from worker.messages import ProgressEvent
from worker.pipeline import Progress

ProgressSink = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class ProgressEmitter:
    """Turns pipeline stages and chunk progress into ProgressEvents for one job."""

    job_id: str
    sink: ProgressSink
    logprobs: bool = False  # the job asked for them: each chunk's go with its text

    def __call__(self, stage: str, progress: Progress | None = None) -> None:
        if progress is None:
            self.sink(ProgressEvent(job_id=self.job_id, stage=stage))
            return
        self.sink(
            ProgressEvent(
                job_id=self.job_id,
                stage=stage,
                chunks_done=progress.chunks_done,
                chunks_total=progress.chunks_total,
                percent=round(progress.percent, 1),
                chunk_index=progress.chunk_index,
                text=progress.text,
                logprobs=[dataclasses.asdict(p) for p in progress.logprobs] if self.logprobs else None,
            )
        )
