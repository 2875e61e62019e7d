"""The pipeline's data: how a job is processed, a job prepared for its chunks, progress, the transcript."""

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from worker.engine.transcriber import Segment, Task, TokenLogprob, Word
from worker.media.audio import SAMPLE_RATE, Audio
from worker.media.chunking import Chunk, ChunkingOptions
from worker.media.speech import VadOptions
from worker.media.turns import TurnOptions
from worker.messages import SegmentOut

Chunking = Literal["energy", "vad"]


@dataclass(frozen=True)
class PipelineOptions:
    """How a job is processed (built from Settings by the entry point)."""

    parallel: bool = True
    workers: int = 2
    threads: int = 0  # per whisper call; 0 = CPUs / concurrent calls
    cpus: int = 0  # CPUs this pipeline may use; 0 = all (a worker running N jobs at once gives each 1/N)
    max_audio_seconds: float | None = 4 * 3600.0
    # Start the longest chunks first, so that no long one is left running alone at the end.
    longest_first: bool = False
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)
    # "vad": chunks of speech only (Silero, worker.media.speech); "energy": the level-based splitter.
    chunker: Chunking = "energy"
    vad: VadOptions = field(default_factory=VadOptions)
    turns: TurnOptions = field(default_factory=TurnOptions)

    @property
    def concurrent_calls(self) -> int:
        return self.workers if self.parallel else 1


@dataclass(frozen=True)
class Progress:
    """Reported after each finished chunk."""

    chunks_done: int
    chunks_total: int
    audio_seconds_done: float
    audio_seconds_total: float
    # The chunk that just finished and its text (its segments joined as the transcript joins them):
    # what a streamed answer sends, in chunk order, as the chunks before it are done.
    chunk_index: int | None = None
    text: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # the chunk's text tokens', in order

    @property
    def percent(self) -> float:
        return 100.0 if self.chunks_total == 0 else 100.0 * self.chunks_done / self.chunks_total


ProgressCallback = Callable[[Progress], None]

# A job's say on speech detection: None = the worker's configured chunker, False = the energy splitter,
# True = VAD with the worker's options, VadOptions = VAD with these.
VadChoice = VadOptions | bool | None


@dataclass(frozen=True)
class Conditioning:
    """How every chunk of a job is decoded: the task, and the job's prompt and temperature (each chunk
    gets the prompt: a chunk is one whisper call, and whisper.cpp prompts a call's first window)."""

    task: Task
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False


@dataclass(frozen=True)
class KnownVoice:
    """A speaker a job names, and a clip of their voice (16 kHz mono, checked by speakers.known_voice)."""

    name: str
    samples: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Diarization:
    """Who spoke when, as a job asks: "channels" (one speaker per channel) or "speakers" (voices
    clustered), with the number of speakers given or bounded. `words`: the job wants word times in
    its output (diarize "speakers" transcribes with them anyway, to cut segments at turns)."""

    mode: Literal["channels", "speakers"]
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    words: bool = True
    known: tuple[KnownVoice, ...] = ()  # "speakers": voices to name


class VoiceEmbedder(Protocol):
    """worker.engine.voices.SpeakerEncoder, as the pipeline uses it."""

    def embed_windows(self, windows: Iterable[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Prepared:
    """A job decoded and split, ready for its chunks to be transcribed here or fanned out.

    `sources`: the audio the chunks are read from, by `Chunk.source`: the recording (mono), or each of
    its channels (diarize "channels")."""

    sources: tuple[Audio, ...]
    chunks: list[Chunk]
    language: str | None
    language_probability: float | None
    threads: int  # per whisper call
    decode_seconds: float
    started: float  # perf_counter() when the job's decoding began
    diarization: Diarization | None = None
    # Stretches of speech without a pause (diarize "speakers" embeds windows inside them, never across
    # a pause, where the speaker is likeliest to change).
    voiced: tuple[tuple[int, int], ...] = ()

    @property
    def audio(self) -> Audio:
        """The recording (its first channel for diarize "channels")."""
        return self.sources[0]

    def samples(self, chunk: Chunk) -> np.ndarray:
        """A chunk's audio."""
        return chunk_samples(self.sources[chunk.source], chunk)

    @property
    def duration_seconds(self) -> float:
        return self.audio.n_samples / SAMPLE_RATE


def joined(segments: Iterable[Segment]) -> str:
    """The text of segments, as a transcript has it: their texts (none empty) joined by a space."""
    return " ".join(s.text for s in segments if s.text)


def token_logprobs(segments: Iterable[Segment]) -> tuple[TokenLogprob, ...]:
    """The segments' text tokens with their log probabilities, in order (the text `joined` spells)."""
    return tuple(p for s in segments for p in s.logprobs or ())


def chunk_samples(audio: Audio, chunk: Chunk) -> np.ndarray:
    """The chunk's audio: its pieces of the job's audio, one after another."""
    spans = [audio.read(start, end) for start, end in chunk.spans]
    return spans[0] if len(spans) == 1 else np.concatenate(spans)


@dataclass(frozen=True)
class Transcript:
    """The pipeline's output for one job; times in seconds from the start of the input."""

    text: str
    segments: tuple[Segment, ...]
    language: str | None
    language_probability: float | None
    duration_seconds: float
    model: str
    chunks: int
    decode_seconds: float
    transcribe_seconds: float

    @property
    def real_time_factor(self) -> float:
        """Transcription wall time per second of audio (lower is faster)."""
        return self.transcribe_seconds / self.duration_seconds if self.duration_seconds else 0.0

    def document(self) -> dict[str, Any]:
        """The JSON form (json output format, results)."""
        return {
            "text": self.text,
            "segments": [segment_document(s) for s in self.segments],
            "language": self.language,
            "language_probability": self.language_probability,
            "duration_seconds": round(self.duration_seconds, 3),
            "model": self.model,
        }


def segment_out(segment: Segment, *, logprobs: bool = False) -> SegmentOut:
    """A segment as results and fanned-out chunk results carry it (its token log probabilities when asked)."""
    return SegmentOut.model_validate(segment_document(segment, logprobs=logprobs))


def segment_in(segment: SegmentOut) -> Segment:
    """The segment a fanned-out chunk result carried, as the pipeline's own."""
    words = None if segment.words is None else tuple(Word(**w.model_dump()) for w in segment.words)
    logprobs = None
    if segment.logprobs is not None:
        logprobs = tuple(TokenLogprob(p.token, tuple(p.bytes), p.logprob) for p in segment.logprobs)
    return Segment(
        start=segment.start,
        end=segment.end,
        text=segment.text,
        tokens=tuple(segment.tokens),
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        words=words,
        speaker=segment.speaker,
        logprobs=logprobs,
    )


def segment_document(segment: Segment, *, logprobs: bool = False) -> dict[str, Any]:
    """A segment's JSON form (results, the json output, fanned-out chunk results): words only when asked
    for, token log probabilities with `logprobs` (where the engine has them)."""
    document = {
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "avg_logprob": segment.avg_logprob,
        "no_speech_prob": segment.no_speech_prob,
    }
    if segment.words is not None:
        document["words"] = [_drop_none(dataclasses.asdict(w), "speaker") for w in segment.words]
    if segment.speaker is not None:
        document["speaker"] = segment.speaker
    if logprobs and segment.logprobs is not None:
        document["logprobs"] = [dataclasses.asdict(p) for p in segment.logprobs]
    return document


def _drop_none(document: dict[str, Any], key: str) -> dict[str, Any]:
    """`document` without `key` when that is None (a speaker only where diarization set one)."""
    if document.get(key) is None:
        document.pop(key, None)
    return document
