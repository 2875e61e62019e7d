"""What a fan-out coordinator knows of its job: the chunk results and the scatter record read from its
gather queue so far (worker/service/fanout.py does the reading, over the broker).

Results are counted by chunk index, not by messages received: a redelivery race may bring one chunk's
result twice, and the duplicate is ignored.
"""

import time
from dataclasses import dataclass, field

from loguru import logger

from worker.engine.transcriber import Segment
from worker.messages.fanout import GatherMessage
from worker.pipeline import Prepared, Progress, ProgressCallback, joined, segment_in, token_logprobs


@dataclass
class Gathered:
    """The chunk results of one job, by index, and what else its gather queue said."""

    total: int
    results: dict[int, list[Segment]] = field(default_factory=dict)
    scattered_at: float | None = None
    failure: GatherMessage | None = None
    done_seconds: float = 0.0
    received_bytes: int = 0

    def must_scatter(self, gather_timeout_seconds: float) -> bool:
        """Whether chunk tasks are to be published: never yet, or so long ago that the missing ones were lost."""
        if len(self.results) == self.total:
            return False
        if self.scattered_at is None:
            return True
        # Tasks published long ago with results still missing were lost (dead-lettered by the broker's
        # delivery limit, or purged): publish those again.
        return time.time() - self.scattered_at > gather_timeout_seconds

    def in_order(self) -> list[list[Segment]]:
        return [self.results[i] for i in range(self.total)]

    def take(self, inbox: list[bytes], prepared: Prepared, progress: ProgressCallback | None) -> bool:
        """Fold the messages received into this; True when a new chunk result came."""
        news = False
        while inbox:
            body = inbox.pop(0)
            self.received_bytes += len(body)
            try:
                message = GatherMessage.model_validate_json(body)
            except ValueError as exc:
                logger.error("Ignoring a malformed message on the gather queue: {}", exc)
                continue
            if message.kind == "scattered":
                self.scattered_at = max(self.scattered_at or 0.0, message.at or 0.0)
            elif message.index is None or not 0 <= message.index < self.total:
                logger.error("Ignoring a chunk result with index {}", message.index)
            elif message.status == "failed":
                self.failure = message
            elif message.index not in self.results:  # a duplicate (redelivery race) is ignored
                chunk = prepared.chunks[message.index]
                self.results[message.index] = [segment_in(s) for s in message.segments]
                self.done_seconds += chunk.seconds
                news = True
                logger.debug("Chunk {} back from {} ({:.2f} s)", message.index, message.worker, message.seconds)
                if progress is not None:
                    done, seconds = len(self.results), self.done_seconds
                    segments = self.results[message.index]
                    total, audio = self.total, prepared.duration_seconds
                    tokens = token_logprobs(segments)
                    progress(Progress(done, total, seconds, audio, message.index, joined(segments), tokens))
        return news
