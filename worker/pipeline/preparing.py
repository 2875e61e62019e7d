"""The preparing stage: one input -> a Prepared job, its chunks ready to be transcribed here or fanned out.

decode (worker.media.audio) -> split (splitting.Splitter) -> language (once per job, first chunk)
"""

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from loguru import logger

from worker.engine.transcriber import WhisperTranscriber
from worker.media.audio import Audio, decode_channels, decode_to_file
from worker.pipeline.model import Diarization, PipelineOptions, Prepared, VadChoice, chunk_samples
from worker.pipeline.splitting import Split, Splitter


class Preparer:
    """Prepares one job at a time per call; safe to call from several threads (the splitter and the
    transcriber's language detection are)."""

    def __init__(
        self,
        splitter: Splitter,
        transcriber: WhisperTranscriber,
        options: PipelineOptions,
        threads_for: Callable[[int], int],
    ) -> None:
        self.splitter = splitter
        self.transcriber = transcriber
        self.options = options
        self.threads_for = threads_for  # threads per whisper call for a job of n chunks

    def file(
        self,
        path: Path,
        work_dir: Path,
        *,
        language: str | None = None,
        languages: Sequence[str] = (),
        vad: VadChoice = None,
        diarization: Diarization | None = None,
    ) -> Prepared:
        """Decode `path` into a PCM file in `work_dir`, split it, settle its language (detected among
        `languages` when given)."""
        started = time.perf_counter()
        limit = self.options.max_audio_seconds
        if diarization is not None and diarization.mode == "channels":
            channels = decode_channels(path, work_dir / "channels.pcm", max_seconds=limit)
            decoded = time.perf_counter()
            split = self.splitter.channels(channels, vad)
        else:
            audio = decode_to_file(path, work_dir / "audio.pcm", max_seconds=limit)
            decoded = time.perf_counter()
            split = self.splitter.mono(audio, vad)
        return self._settled(split, language, decoded - started, started, diarization, languages)

    def audio(
        self, audio: Audio, *, language: str | None = None, started: float | None = None, vad: VadChoice = None
    ) -> Prepared:
        """Split decoded audio into chunks (read in blocks) and settle its language."""
        started = time.perf_counter() if started is None else started
        decoded = time.perf_counter()
        return self._settled(self.splitter.mono(audio, vad), language, decoded - started, started, None)

    def _settled(
        self,
        split: Split,
        language: str | None,
        decode_seconds: float,
        started: float,
        how: Diarization | None,
        languages: Sequence[str] = (),
    ) -> Prepared:
        """The split job with its language settled (detected once, on the first chunk, so every chunk is
        decoded in the same language) and its threads per call."""
        threads = self.threads_for(len(split.chunks))
        probability = None
        if language is None and split.chunks:
            language, probability = self._detected_language(split, threads, languages)
        return Prepared(
            split.sources, split.chunks, language, probability, threads, decode_seconds, started, how, split.voiced
        )

    def _detected_language(self, split: Split, threads: int, among: Sequence[str]) -> tuple[str, float | None]:
        if not self.transcriber.multilingual:
            return "en", None
        first = split.chunks[0]
        samples = chunk_samples(split.sources[first.source], first)
        detected, probability = self.transcriber.detect_language(samples, n_threads=threads, among=among)
        logger.info("Detected language {} (p={:.2f})", detected, probability)
        return detected, probability
