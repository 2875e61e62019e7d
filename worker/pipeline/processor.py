"""One audio input to one transcript, as stages read top to bottom:

    decode -> split -> language (preparing.Preparer, over splitting.Splitter)
    -> chunks as WAV files -> transcribe (chunks.ChunkRunner, over the ONE shared WhisperTranscriber)
    -> speakers (speakers.py, when diarized) -> Transcript (assembling.Assembler)

A fanned-out job runs the same stages with the transcription on other workers (worker.service.fanout).
"""

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from worker.engine.speech import SpeechDetector
from worker.engine.transcriber import Segment, Task, WhisperTranscriber
from worker.errors import SingleChannel
from worker.media.audio import Audio, InMemoryAudio, write_wav
from worker.media.chunking import Chunk
from worker.pipeline.assembling import Assembler
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
)
from worker.pipeline.preparing import Preparer
from worker.pipeline.speakers import VoiceLabeller
from worker.pipeline.splitting import Splitter


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
        self.preparer = Preparer(self.splitter, transcriber, options, self.runner.threads_for)
        self.assembler = Assembler(self.speakers, transcriber, model_name=model_name, options=options)
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
        return self.preparer.file(
            path, work_dir, language=language, languages=languages, vad=vad, diarization=diarization
        )

    def prepare_audio(
        self, audio: Audio, *, language: str | None = None, started: float | None = None, vad: VadChoice = None
    ) -> Prepared:
        """Split decoded audio into chunks (read in blocks) and settle its language."""
        return self.preparer.audio(audio, language=language, started=started, vad=vad)

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
        return self.assembler(prepared, per_chunk)

    def threads_for(self, n_chunks: int) -> int:
        """Threads per whisper call for a job of `n_chunks` (ChunkRunner.threads_for)."""
        return self.runner.threads_for(n_chunks)


def _write_chunk(work_dir: Path, prepared: Prepared, chunk: Chunk) -> Path:
    path = work_dir / chunk.name
    write_wav(path, prepared.samples(chunk))
    return path
