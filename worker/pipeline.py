"""One audio input to one transcript: decode, split into WAV chunks, transcribe, merge.

The chunks of a job run in a ThreadPoolExecutor over the ONE WhisperTranscriber the entry
point created for the process (parallel mode), or one after another with every CPU thread
(sequential mode). Results are merged in chunk order, whatever order threads finish in, with
each chunk's true start offset added to its segment times.
"""

import contextvars
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from loguru import logger

from worker.engine.speech import SpeechDetector
from worker.engine.transcriber import Segment, Task, WhisperTranscriber, Word, threads_per_call
from worker.errors import SingleChannel, TranscriptionError, WorkerError
from worker.media.audio import (
    SAMPLE_RATE,
    Audio,
    ChannelsPcm,
    InMemoryAudio,
    decode_channels,
    decode_to_file,
    read_wav,
    write_wav,
)
from worker.media.chunking import (
    LEVEL_BLOCK,
    Chunk,
    ChunkingOptions,
    block_levels,
    frame_db,
    split_levels,
    voiced_frames,
    voiced_seconds_after,
)
from worker.media.speech import (
    Levelled,
    VadOptions,
    detection_gains,
    dominant,
    same_sound,
    speech_chunks,
    window_levels,
)
from worker.media.turns import Turn, TurnOptions, cluster, speaker_of, turns, voiced_regions, windows
from worker.messages import MAX_SPEAKERS, SegmentOut

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

    @property
    def percent(self) -> float:
        return 100.0 if self.chunks_total == 0 else 100.0 * self.chunks_done / self.chunks_total


ProgressCallback = Callable[[Progress], None]

# whisper sometimes closes a window early: it ends its last segment with a lone timestamp and
# skips the rest of the window, speech included (seen with tiny.en: 16 s of a sonnet dropped
# after the sentence before it). When at least UNHEARD_SECONDS of voiced audio follow the last
# segment (allowing HEARD_SLACK_SECONDS for imprecise end times), that tail is transcribed again
# on its own, at most TAIL_PASSES times per chunk.
UNHEARD_SECONDS = 2.0
HEARD_SLACK_SECONDS = 1.0
TAIL_PASSES = 2


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
        voices: "Callable[[], VoiceEmbedder] | None" = None,
    ) -> None:
        if options.chunker == "vad" and speech is None:
            raise ValueError("VAD chunking needs a speech detector")
        if options.concurrent_calls > max(transcriber.max_concurrent_calls, transcriber.in_flight):
            raise ValueError(
                f"{options.workers} workers need a transcriber for {options.workers} concurrent calls "
                f"(it allows {transcriber.max_concurrent_calls})"
            )
        self.transcriber = transcriber
        self.model_name = model_name
        self.options = options
        self.work_root = work_root
        self.speech = speech
        self._voices = voices  # made on first use: only diarize "speakers" needs the voice encoder

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
        vad: "VadChoice" = None,
        diarization: "Diarization | None" = None,
    ) -> Transcript:
        """Decode `path` and transcribe it. Raises AudioDecodeError or TranscriptionError."""
        with tempfile.TemporaryDirectory(prefix="job-", dir=self.work_root) as work_dir:
            prepared = self.prepare(path, Path(work_dir), language=language, vad=vad, diarization=diarization)
            per_chunk = self.transcribe_chunks(
                prepared,
                task,
                progress,
                Path(work_dir),
                prompt=prompt,
                temperature=temperature,
                word_timestamps=word_timestamps,
            )
            return self.assemble(prepared, per_chunk)

    def process_samples(
        self,
        samples: np.ndarray,
        *,
        language: str | None = None,
        task: Task = "transcribe",
        progress: ProgressCallback | None = None,
        word_timestamps: bool = False,
        vad: "VadChoice" = None,
        diarization: "Diarization | None" = None,
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
        vad: "VadChoice" = None,
        diarization: "Diarization | None" = None,
    ) -> "Prepared":
        """Decode `path` into a PCM file in `work_dir`, split it, settle its language."""
        started = time.perf_counter()
        limit = self.options.max_audio_seconds
        if diarization is not None and diarization.mode == "channels":
            channels = decode_channels(path, work_dir / "channels.pcm", max_seconds=limit)
            return self.prepare_channels(channels, language=language, started=started, vad=vad)
        audio = decode_to_file(path, work_dir / "audio.pcm", max_seconds=limit)
        prepared = self.prepare_audio(audio, language=language, started=started, vad=vad)
        return dataclasses.replace(prepared, diarization=diarization)

    def prepare_audio(
        self, audio: Audio, *, language: str | None = None, started: float | None = None, vad: "VadChoice" = None
    ) -> "Prepared":
        """Split decoded audio into chunks (read in blocks) and settle its language."""
        started = time.perf_counter() if started is None else started
        decoded = time.perf_counter()
        chunks, voiced, heard = self.split(audio, vad)
        threads = self.threads_for(len(chunks))
        language, probability = self._language((heard,), chunks, language, threads)
        prepared = Prepared((heard,), chunks, language, probability, threads, decoded - started, started)
        return dataclasses.replace(prepared, voiced=voiced)

    def prepare_channels(
        self, audio: ChannelsPcm, *, language: str | None = None, started: float, vad: "VadChoice" = None
    ) -> "Prepared":
        """One speaker per channel: each channel's own speech (VAD; a window another channel is much
        louder in is that channel's speaker bleeding in, not this one's), as chunks labelled by channel."""
        decoded = time.perf_counter()
        if not 2 <= audio.n_channels <= MAX_SPEAKERS:
            raise SingleChannel(
                f'diarize "channels" needs 2 to {MAX_SPEAKERS} channels, one per speaker; this recording has '
                f'{audio.n_channels} (diarize "speakers" tells voices apart in one channel)'
            )
        if self.speech is None:
            raise TranscriptionError('diarize "channels" needs speech detection, and this worker has none')
        options = self._vad_options(vad) or self.options.vad  # channels are always split by speech
        channels = tuple(audio.channel(k) for k in range(audio.n_channels))
        probabilities, levels, sources = zip(
            *(detect_speech(self.speech, channel, options) for channel in channels), strict=True
        )
        if same_sound(list(levels)):
            raise SingleChannel(
                'diarize "channels": every channel carries the same sound (a mono recording stored as '
                'multichannel), so channels cannot tell speakers apart; use diarize "speakers"'
            )
        limit = self.options.chunking.max_seconds
        found = [
            chunk
            for number, p in enumerate(dominant(list(probabilities), list(levels)))
            for chunk in speech_chunks(p, audio.n_samples, options, max_seconds=limit, source=number)
        ]
        # In time order across the channels, renumbered: chunk order is transcript order.
        chunks = [
            dataclasses.replace(chunk, index=index)
            for index, chunk in enumerate(sorted(found, key=lambda c: (c.start, c.source)))
        ]
        threads = self.threads_for(len(chunks))
        language, probability = self._language(sources, chunks, language, threads)
        prepared = Prepared(sources, chunks, language, probability, threads, decoded - started, started)
        return dataclasses.replace(prepared, diarization=Diarization("channels"))

    def split(self, audio: Audio, vad: "VadChoice" = None) -> tuple[list[Chunk], tuple[tuple[int, int], ...], Audio]:
        """The job's chunks, speech regions (VAD) or energy-based as the job or the options say; its
        voiced stretches for diarization: speech split at every short pause (VAD), else the chunks; and the
        audio whisper hears (VAD: with quiet stretches raised, as the detector heard it)."""
        options = self._vad_options(vad)
        if options is None:
            chunks = split_levels(block_levels(_blocks(audio)), audio.n_samples, self.options.chunking)
            return chunks, tuple(span for chunk in chunks for span in chunk.spans), audio
        if self.speech is None:
            raise TranscriptionError("VAD chunking was asked for, but this worker has no speech detector")
        started = time.perf_counter()
        probabilities, _, heard = detect_speech(self.speech, audio, options)
        chunks = speech_chunks(probabilities, audio.n_samples, options, max_seconds=self.options.chunking.max_seconds)
        voiced = tuple(voiced_regions(probabilities, audio.n_samples, options))
        logger.debug(
            "Speech detection: {:.1f} s of speech in {:.1f} s of audio, {} chunks ({:.2f} s)",
            sum(c.seconds for c in chunks),
            audio.n_samples / SAMPLE_RATE,
            len(chunks),
            time.perf_counter() - started,
        )
        return chunks, voiced, heard

    def _vad_options(self, vad: "VadChoice") -> VadOptions | None:
        if vad is None:
            return self.options.vad if self.options.chunker == "vad" else None
        if vad is False:
            return None
        return self.options.vad if vad is True else vad

    def transcribe_chunks(
        self,
        prepared: "Prepared",
        task: Task,
        progress: ProgressCallback | None,
        work_dir: Path,
        *,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
    ) -> list[list[Segment]]:
        """In-process mode: every chunk as a WAV file in `work_dir`, transcribed on this process's pool."""
        paths = [_write_chunk(work_dir, prepared, chunk) for chunk in prepared.chunks]
        return self._run(
            prepared.chunks,
            paths,
            prepared.language,
            _Conditioning(task, prompt, temperature, word_timestamps),
            prepared.threads,
            progress,
            prepared.duration_seconds,
        )

    def assemble(self, prepared: "Prepared", per_chunk: list[list[Segment]]) -> Transcript:
        """One transcript from every chunk's segments (absolute times), in chunk order; diarized ones
        labelled with their speakers, in time order."""
        segments = tuple(s for chunk_segments in per_chunk for s in chunk_segments)
        diarization = prepared.diarization
        if diarization is not None and diarization.mode == "channels":
            segments = by_channel(prepared.chunks, per_chunk)
        elif diarization is not None:
            segments = self._by_voice(prepared, segments, diarization)
        language = prepared.language
        transcript = Transcript(
            text=" ".join(s.text for s in segments if s.text),
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
        """One chunk's samples -> its segments in absolute time (also what a fanned-out chunk task runs)."""
        logger.info("Starting transcription: {}", chunk.name)
        started = time.perf_counter()
        how = _Conditioning(task, prompt, temperature, word_timestamps)
        segments = self._transcribe_audio(samples, chunk.name, language, how, threads)
        elapsed = time.perf_counter() - started
        logger.debug(
            "Finished {} ({:.1f} s of audio) in {:.2f} s (RTF {:.3f})",
            chunk.name,
            chunk.seconds,
            elapsed,
            elapsed / max(chunk.seconds, 1e-9),
        )
        return [_absolute(segment, chunk) for segment in segments]

    @property
    def chunks_in_flight(self) -> int:
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

    def _language(
        self, sources: tuple[Audio, ...], chunks: list[Chunk], language: str | None, threads: int
    ) -> tuple[str | None, float | None]:
        # Detect once per job, on the first chunk, so every chunk is decoded in the same language.
        if language is not None or not chunks:
            return language, None
        if not self.transcriber.multilingual:
            return "en", None
        first = chunks[0]
        detected, probability = self.transcriber.detect_language(
            chunk_samples(sources[first.source], first), n_threads=threads
        )
        logger.info("Detected language {} (p={:.2f})", detected, probability)
        return detected, probability

    def _run(
        self,
        chunks: list[Chunk],
        paths: list[Path],
        language: str | None,
        how: "_Conditioning",
        threads: int,
        progress: ProgressCallback | None,
        total_seconds: float,
    ) -> list[list[Segment]]:
        results: list[list[Segment]] = [[] for _ in chunks]
        done, done_seconds = 0, 0.0
        with ThreadPoolExecutor(max_workers=self.chunks_in_flight, thread_name_prefix="chunk") as pool:
            # Each task runs in a copy of this thread's context, so log lines keep the job id.
            order = sorted(zip(chunks, paths, strict=True), key=lambda pair: -pair[0].seconds)
            futures: dict[Future, Chunk] = {
                pool.submit(
                    contextvars.copy_context().run, self._transcribe_chunk, chunk, path, language, how, threads
                ): chunk
                for chunk, path in (order if self.options.longest_first else zip(chunks, paths, strict=True))
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunk = futures[future]
                    results[chunk.index] = _result_or_raise(future, chunk, pending)
                    done, done_seconds = done + 1, done_seconds + chunk.seconds
                    if progress is not None:
                        progress(Progress(done, len(chunks), done_seconds, total_seconds))
        return results

    def _transcribe_chunk(
        self, chunk: Chunk, path: Path, language: str | None, how: "_Conditioning", threads: int
    ) -> list[Segment]:
        return self.transcribe_chunk(
            read_wav(path),
            chunk,
            language,
            how.task,
            threads,
            prompt=how.prompt,
            temperature=how.temperature,
            word_timestamps=how.word_timestamps,
        )

    def _transcribe_audio(
        self, audio: np.ndarray, name: str, language: str | None, how: "_Conditioning", threads: int
    ) -> list[Segment]:
        """Segments of one chunk's audio, with any speech whisper skipped at the end transcribed again."""
        segments: list[Segment] = []
        offset = 0.0
        voiced = voiced_frames(frame_db(audio), self.options.chunking)  # threshold adapted to this chunk
        for attempt in range(1 + TAIL_PASSES):
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

    def _by_voice(self, prepared: "Prepared", segments: tuple[Segment, ...], how: "Diarization") -> tuple[Segment, ...]:
        """Segments split at speaker turns and labelled, the turns found by clustering voice embeddings of
        the job's speech (on the coordinator for a fanned-out job: one clustering, labels consistent)."""
        if self._voices is None:
            raise TranscriptionError('diarize "speakers" needs the voice encoder, and this worker has none')
        started = time.perf_counter()
        spans = windows(list(prepared.voiced))
        embeddings = self._voices().embed_windows(prepared.audio.read(s, e) for s, e in spans)
        labels = cluster(
            embeddings,
            self.options.turns,
            num_speakers=how.num_speakers,
            min_speakers=how.min_speakers or 1,
            max_speakers=how.max_speakers,
        )
        found = turns(spans, embeddings, labels, self.options.turns)
        split = tuple(piece for segment in segments for piece in split_at_turns(segment, found, words=how.words))
        logger.info(
            "Diarized: {} speakers over {} windows in {:.2f} s",
            len({t.speaker for t in found}),
            len(spans),
            time.perf_counter() - started,
        )
        return split

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


def segment_out(segment: Segment) -> SegmentOut:
    """A segment as results and fanned-out chunk results carry it."""
    return SegmentOut.model_validate(segment_document(segment))


def segment_in(segment: SegmentOut) -> Segment:
    """The segment a fanned-out chunk result carried, as the pipeline's own."""
    words = None if segment.words is None else tuple(Word(**w.model_dump()) for w in segment.words)
    return Segment(
        start=segment.start,
        end=segment.end,
        text=segment.text,
        tokens=tuple(segment.tokens),
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        words=words,
        speaker=segment.speaker,
    )


def segment_document(segment: Segment) -> dict[str, Any]:
    """A segment's JSON form (results, the json output, fanned-out chunk results): words only when asked for."""
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
    return document


def _drop_none(document: dict[str, Any], key: str) -> dict[str, Any]:
    """`document` without `key` when that is None (a speaker only where diarization set one)."""
    if document.get(key) is None:
        document.pop(key, None)
    return document


@dataclass(frozen=True)
class _Conditioning:
    """How every chunk of a job is decoded: the task, and the job's prompt and temperature (each chunk
    gets the prompt: a chunk is one whisper call, and whisper.cpp prompts a call's first window)."""

    task: Task
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False


# A job's say on speech detection: None = the worker's configured chunker, False = the energy splitter,
# True = VAD with the worker's options, VadOptions = VAD with these.
VadChoice = VadOptions | bool | None


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


def _blocks(audio: Audio) -> Iterator[np.ndarray]:
    for start in range(0, audio.n_samples, LEVEL_BLOCK):
        yield audio.read(start, start + LEVEL_BLOCK)


def detect_speech(speech: SpeechDetector, audio: Audio, options: VadOptions) -> tuple[np.ndarray, np.ndarray, Audio]:
    """Speech probability and level (dBFS) of every 512-sample window, and the recording as the detector
    hears it: with its quiet stretches raised (worker.media.speech.detection_gains) when `level_quiet`."""
    levels = np.concatenate([np.zeros(0), *map(window_levels, _blocks(audio))])
    heard = Levelled(audio, detection_gains(levels)) if options.level_quiet else audio
    return speech.probabilities(heard.read, heard.n_samples), levels, heard


def speaker_label(number: int) -> str:
    """A, B, C, ... for speakers (or channels) 0, 1, 2, ..."""
    return chr(ord("A") + number)


def labelled(segment: Segment, speaker: str) -> Segment:
    """A segment and its words said by `speaker`."""
    words = None if segment.words is None else tuple(dataclasses.replace(w, speaker=speaker) for w in segment.words)
    return dataclasses.replace(segment, speaker=speaker, words=words)


def split_at_turns(segment: Segment, found: list[Turn], *, words: bool) -> list[Segment]:
    """A segment cut where its words change speaker (each piece labelled); `words`: keep the words.

    Needs the segment's words (diarize "speakers" always asks whisper for them); a segment without
    any is labelled whole, by overlap."""
    if not segment.words:
        speaker = speaker_of(found, segment.start, segment.end)
        return [segment if speaker is None else labelled(segment, speaker_label(speaker))]
    groups: list[tuple[int | None, list[Word]]] = []
    for word in segment.words:
        speaker = speaker_of(found, word.start, word.end)
        if groups and groups[-1][0] == speaker:
            groups[-1][1].append(word)
        else:
            groups.append((speaker, [word]))
    pieces = []
    for speaker, group in groups:
        piece = dataclasses.replace(
            segment,
            start=group[0].start if len(groups) > 1 else segment.start,
            end=group[-1].end if len(groups) > 1 else segment.end,
            text="".join(w.word for w in group).strip() if len(groups) > 1 else segment.text,
            tokens=segment.tokens if len(groups) == 1 else (),  # whisper's tokens are the whole segment's
            words=tuple(group),
        )
        if speaker is not None:
            piece = labelled(piece, speaker_label(speaker))
        pieces.append(piece if words else dataclasses.replace(piece, words=None))
    return pieces


def by_channel(chunks: list[Chunk], per_chunk: list[list[Segment]]) -> tuple[Segment, ...]:
    """Every channel's segments labelled with its speaker (A = the first channel), merged in time order."""
    merged = [
        (segment.start, chunk.source, labelled(segment, speaker_label(chunk.source)))
        for chunk, segments in zip(chunks, per_chunk, strict=True)
        for segment in segments
    ]
    return tuple(segment for _, _, segment in sorted(merged, key=lambda item: item[:2]))


def chunk_samples(audio: Audio, chunk: Chunk) -> np.ndarray:
    """The chunk's audio: its pieces of the job's audio, one after another."""
    spans = [audio.read(start, end) for start, end in chunk.spans]
    return spans[0] if len(spans) == 1 else np.concatenate(spans)


def _write_chunk(work_dir: Path, prepared: "Prepared", chunk: Chunk) -> Path:
    path = work_dir / chunk.name
    write_wav(path, prepared.samples(chunk))
    return path


def _absolute(segment: Segment, chunk: Chunk) -> Segment:
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
