"""One audio input to one transcript, as stages read top to bottom:

    decode (worker.media.audio) -> split (splitting.Splitter) -> language (once per job, first chunk)
    -> chunks as WAV files -> transcribe (chunks.ChunkRunner, over the ONE shared WhisperTranscriber)
    -> speakers (speakers.py, when diarized) -> Transcript

A fanned-out job runs the same stages with the transcription on other workers (worker.service.fanout).
"""

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from loguru import logger

from worker.engine.speech import SpeechDetector
from worker.engine.transcriber import Segment, Task, WhisperTranscriber
from worker.errors import SingleChannel
from worker.media.audio import Audio, InMemoryAudio, decode_channels, decode_to_file, write_wav
from worker.media.chunking import Chunk
from worker.pipeline.chunks import ChunkRunner
from worker.pipeline.lanes import Lane, Lanes
from worker.pipeline.model import (
    Conditioning,
    Diarization,
    PipelineOptions,
    Prepared,
    ProgressCallback,
    Transcript,
    VadChoice,
    VoiceEmbedder,
    chunk_samples,
    joined,
)
from worker.pipeline.speakers import VoiceLabeller, by_channel
from worker.pipeline.splitting import Split, Splitter


class Processor:
    """Runs the pipeline for one job at a time per call; safe to call from several threads."""

    def __init__(
        self,
        transcriber: WhisperTranscriber,
        *,
        model_name: str,
        options: PipelineOptions,
        work_root: Path | None = None,
        speech: SpeechDetector | None = None,
        voices: Callable[[], VoiceEmbedder] | None = None,
        lanes: Lanes | None = None,
    ) -> None:
        self.splitter = Splitter(options, speech)
        self.runner = ChunkRunner(transcriber, options, lanes)
        self.lanes = self.runner.lanes  # the process's, shared by every model's processor
        self.speakers = VoiceLabeller(voices, options.turns)
        self.transcriber = transcriber
        self.model_name = model_name
        self.options = options
        self.work_root = work_root
        self.speech = speech

    def process_file(
        self,
        path: Path,
        *,
        language: str | None = None,
        task: Task = "transcribe",
        progress: ProgressCallback | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        vad: VadChoice = None,
        diarization: Diarization | None = None,
    ) -> Transcript:
        """Decode `path` and transcribe it. Raises AudioDecodeError or TranscriptionError."""
        with tempfile.TemporaryDirectory(prefix="job-", dir=self.work_root) as work_dir:
            prepared = self.prepare(path, Path(work_dir), language=language, vad=vad, diarization=diarization)
            per_chunk = self.transcribe_chunks(
                prepared, task, progress, Path(work_dir),
                prompt=prompt, temperature=temperature, word_timestamps=word_timestamps,
            )  # fmt: skip
            return self.assemble(prepared, per_chunk)

    def process_samples(
        self,
        samples: np.ndarray,
        *,
        language: str | None = None,
        task: Task = "transcribe",
        progress: ProgressCallback | None = None,
        word_timestamps: bool = False,
        vad: VadChoice = None,
        diarization: Diarization | None = None,
    ) -> Transcript:
        """Transcribe 16 kHz mono samples already in memory (clips, tests, benchmarks); diarize
        "speakers" only (channels need a multichannel file)."""
        if diarization is not None and diarization.mode == "channels":
            raise SingleChannel('diarize "channels" needs a multichannel file, not mono samples')
        with tempfile.TemporaryDirectory(prefix="job-", dir=self.work_root) as work_dir:
            prepared = self.prepare_audio(InMemoryAudio(samples), language=language, vad=vad)
            prepared = dataclasses.replace(prepared, diarization=diarization)
            per_chunk = self.transcribe_chunks(
                prepared, task, progress, Path(work_dir), word_timestamps=word_timestamps
            )
            return self.assemble(prepared, per_chunk)

    def prepare(
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

    def prepare_audio(
        self, audio: Audio, *, language: str | None = None, started: float | None = None, vad: VadChoice = None
    ) -> Prepared:
        """Split decoded audio into chunks (read in blocks) and settle its language."""
        started = time.perf_counter() if started is None else started
        decoded = time.perf_counter()
        return self._settled(self.splitter.mono(audio, vad), language, decoded - started, started, None)

    def transcribe_chunks(
        self,
        prepared: Prepared,
        task: Task,
        progress: ProgressCallback | None,
        work_dir: Path,
        *,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        lane: Lane = "bulk",
    ) -> list[list[Segment]]:
        """In-process mode: every chunk as a WAV file in `work_dir`, transcribed on this process's pool."""
        paths = [_write_chunk(work_dir, prepared, chunk) for chunk in prepared.chunks]
        how = Conditioning(task, prompt, temperature, word_timestamps)
        language, threads, seconds = prepared.language, prepared.threads, prepared.duration_seconds
        return self.runner.run(prepared.chunks, paths, language, how, threads, progress, seconds, lane)

    def transcribe_chunk(
        self,
        samples: np.ndarray,
        chunk: Chunk,
        language: str | None,
        task: Task,
        threads: int,
        *,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
    ) -> list[Segment]:
        """One chunk's samples -> its segments in absolute time (what a fanned-out chunk task runs)."""
        how = Conditioning(task, prompt, temperature, word_timestamps)
        return self.runner.transcribe(samples, chunk, language, how, threads)

    def assemble(self, prepared: Prepared, per_chunk: list[list[Segment]]) -> Transcript:
        """One transcript from every chunk's segments (absolute times), in chunk order; diarized ones
        labelled with their speakers, in time order."""
        segments = tuple(s for chunk_segments in per_chunk for s in chunk_segments)
        diarization = prepared.diarization
        if diarization is not None and diarization.mode == "channels":
            pause = self.speakers.options.channel_pause_seconds
            segments = by_channel(prepared.chunks, per_chunk, pause, words=diarization.words)
        elif diarization is not None:
            segments = self.speakers.label(prepared, segments, diarization)
        language = prepared.language
        transcript = Transcript(
            text=joined(segments),
            segments=segments,
            language=language if prepared.chunks or language else (None if self.transcriber.multilingual else "en"),
            language_probability=prepared.language_probability,
            duration_seconds=prepared.duration_seconds,
            model=self.model_name,
            chunks=len(prepared.chunks),
            decode_seconds=prepared.decode_seconds,
            transcribe_seconds=time.perf_counter() - prepared.started - prepared.decode_seconds,
        )
        self._log_summary(transcript, prepared.threads)
        return transcript

    def threads_for(self, n_chunks: int) -> int:
        """Threads per whisper call for a job of `n_chunks` (ChunkRunner.threads_for)."""
        return self.runner.threads_for(n_chunks)

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

    def _log_summary(self, t: Transcript, threads: int) -> None:
        mode = "parallel" if self.options.parallel else "sequential"
        logger.info(
            "Transcribed {:.1f} s of audio in {:.2f} s (real-time factor {:.3f}): {} chunks, mode {}, "
            "workers {}, threads per call {}",
            t.duration_seconds,
            t.transcribe_seconds,
            t.real_time_factor,
            t.chunks,
            mode,
            self.options.concurrent_calls,
            threads,
        )


def _write_chunk(work_dir: Path, prepared: Prepared, chunk: Chunk) -> Path:
    path = work_dir / chunk.name
    write_wav(path, prepared.samples(chunk))
    return path
