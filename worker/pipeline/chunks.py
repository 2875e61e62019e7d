"""The transcription stage: a job's chunks through the ONE shared WhisperTranscriber.

Chunks are handed to a ThreadPoolExecutor (the batched engine decodes the calls waiting together);
results come back in chunk order, whatever order threads finish in, with each chunk's segment times
moved into the recording.
"""

import contextvars
import dataclasses
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
from loguru import logger

from worker.engine.transcriber import Segment, WhisperTranscriber, threads_per_call
from worker.errors import TranscriptionError, WorkerError
from worker.media.audio import SAMPLE_RATE, read_wav
from worker.media.chunking import Chunk, frame_db, voiced_frames, voiced_seconds_after
from worker.pipeline.lanes import Lane, Lanes
from worker.pipeline.model import (
    Conditioning,
    PipelineOptions,
    Progress,
    ProgressCallback,
    joined,
    token_logprobs,
)

# whisper sometimes closes a window early: it ends its last segment with a lone timestamp and
# skips the rest of the window, speech included (seen with tiny.en: 16 s of a sonnet dropped
# after the sentence before it). When at least UNHEARD_SECONDS of voiced audio follow the last
# segment (allowing HEARD_SLACK_SECONDS for imprecise end times), that tail is transcribed again
# on its own, at most TAIL_PASSES times per chunk.
UNHEARD_SECONDS = 2.0
HEARD_SLACK_SECONDS = 1.0
TAIL_PASSES = 2


class ChunkRunner:
    """Transcribes chunks on the shared transcriber; safe to call from several threads."""

    def __init__(self, transcriber: WhisperTranscriber, options: PipelineOptions, lanes: Lanes | None = None) -> None:
        if options.concurrent_calls > max(transcriber.max_concurrent_calls, transcriber.in_flight):
            raise ValueError(
                f"{options.workers} workers need a transcriber for {options.workers} concurrent calls "
                f"(it allows {transcriber.max_concurrent_calls})"
            )
        self.transcriber = transcriber
        self.options = options
        self.lanes = lanes or Lanes()

    @property
    def in_flight(self) -> int:
        """Chunks handed to the transcriber at once: its batch (the batched engine decodes them together,
        one thread computing), else the calls that run at once; one in sequential mode."""
        if not self.options.parallel:
            return 1
        return max(self.options.concurrent_calls, self.transcriber.in_flight)

    def threads_for(self, n_chunks: int) -> int:
        """Threads per whisper call: sequential mode gives its one call every CPU; parallel mode
        splits them among the calls that will really run at once (fewer for a short job)."""
        calls = max(1, min(self.options.concurrent_calls, n_chunks))
        return threads_per_call(calls, cpus=self.options.cpus or None, requested=self.options.threads)

    def run(
        self,
        chunks: list[Chunk],
        paths: list[Path],
        language: str | None,
        how: Conditioning,
        threads: int,
        progress: ProgressCallback | None,
        total_seconds: float,
        lane: Lane = "bulk",
    ) -> list[list[Segment]]:
        """Every chunk (its WAV file at the same index of `paths`), each chunk's segments in chunk order."""
        results: list[list[Segment]] = [[] for _ in chunks]
        done, done_seconds = 0, 0.0
        pairs = list(zip(chunks, paths, strict=True))
        if self.options.longest_first:
            pairs.sort(key=lambda pair: -pair[0].seconds)
        with ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="chunk") as pool:
            # Each task runs in a copy of this thread's context, so log lines keep the job id.
            futures: dict[Future, Chunk] = {
                pool.submit(
                    contextvars.copy_context().run, self._from_file, chunk, path, language, how, threads, lane
                ): chunk
                for chunk, path in pairs
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunk = futures[future]
                    results[chunk.index] = _result_or_raise(future, chunk, pending)
                    done, done_seconds = done + 1, done_seconds + chunk.seconds
                    if progress is not None:
                        text, tokens = joined(results[chunk.index]), token_logprobs(results[chunk.index])
                        progress(Progress(done, len(chunks), done_seconds, total_seconds, chunk.index, text, tokens))
        return results

    def transcribe(
        self,
        samples: np.ndarray,
        chunk: Chunk,
        language: str | None,
        how: Conditioning,
        threads: int,
        lane: Lane = "bulk",
    ) -> list[Segment]:
        """One chunk's samples -> its segments in absolute time (also what a fanned-out chunk task runs)."""
        logger.info("Starting transcription: {}", chunk.name)
        started = time.perf_counter()
        segments = self._with_tails(samples, chunk.name, language, how, threads, lane)
        elapsed = time.perf_counter() - started
        logger.debug(
            "Finished {} ({:.1f} s of audio) in {:.2f} s (RTF {:.3f})",
            chunk.name,
            chunk.seconds,
            elapsed,
            elapsed / max(chunk.seconds, 1e-9),
        )
        return [absolute(segment, chunk) for segment in segments]

    def _from_file(
        self, chunk: Chunk, path: Path, language: str | None, how: Conditioning, threads: int, lane: Lane
    ) -> list[Segment]:
        return self.transcribe(read_wav(path), chunk, language, how, threads, lane)

    def _with_tails(
        self, audio: np.ndarray, name: str, language: str | None, how: Conditioning, threads: int, lane: Lane
    ) -> list[Segment]:
        """Segments of one chunk's audio, with any speech whisper skipped at the end transcribed again."""
        segments: list[Segment] = []
        offset = 0.0
        voiced = voiced_frames(frame_db(audio), self.options.chunking)  # threshold adapted to this chunk
        for attempt in range(1 + TAIL_PASSES):
            with self.lanes.turn(lane):  # a bulk call waits while an interactive job runs (lanes.py)
                result = self.transcriber.transcribe(
                    audio[round(offset * SAMPLE_RATE) :],
                    language=language,
                    task=how.task,
                    n_threads=threads,
                    prompt=how.prompt,
                    temperature=how.temperature,
                    word_timestamps=how.word_timestamps,
                )
            heard = [s.shifted(offset) for s in result.segments if s.text]
            if not heard or (segments and heard[-1].end <= offset):
                break
            segments += heard
            offset = heard[-1].end
            unheard = voiced_seconds_after(voiced, offset + HEARD_SLACK_SECONDS)
            if unheard < UNHEARD_SECONDS or attempt == TAIL_PASSES:
                break
            logger.debug(
                "{}: whisper stopped at {:.1f} s with {:.1f} s of speech after it; transcribing the rest",
                name,
                offset,
                unheard,
            )
        return segments


def absolute(segment: Segment, chunk: Chunk) -> Segment:
    """Segment (and word) times in the recording: a one-piece chunk moves them by its start (held
    inside the chunk), a chunk of speech pieces maps each onto the piece it falls in."""
    if not chunk.pieces:
        return segment.shifted(chunk.start_seconds, clamp=(0.0, chunk.seconds))
    placed = segment.placed(lambda start, end, word: chunk.place(start, end, whole=word))
    if placed.words:  # the words know where the segment's speech is; its own ends may span a cut
        return dataclasses.replace(
            placed, start=placed.words[0].start, end=max(placed.words[-1].end, placed.words[0].start)
        )
    return placed


def _result_or_raise(future: Future, chunk: Chunk, pending: set[Future]) -> list[Segment]:
    try:
        return future.result()
    except (WorkerError, ValueError, OSError) as exc:
        for other in pending:
            other.cancel()
        raise TranscriptionError(f"{chunk.name} (at {chunk.start_seconds:.1f} s) failed: {exc}") from exc
