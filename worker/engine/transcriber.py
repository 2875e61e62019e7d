"""One shared, thread-safe whisper.cpp transcriber per process.

Design (why it looks like this):
- A whisper.cpp context holds the weights; `whisper_full` on one context from two threads
  crashes, and a pywhispercpp `Model` is one context. Loading a Model per thread or per chunk
  costs a full copy of the weights and a load each time (this is what made the old parallel
  mode slower than sequential).
- whisper.cpp's own answer is one context plus one `whisper_state` per concurrent call: the
  "native" backend (`worker.engine.backends`, ctypes over libwhisper), with the "pool" of
  pywhispercpp Models as the fallback when the struct layout does not match.
- With the whisper_group patch (whisper/patches), greedy calls go through the batched engine
  (`worker.engine.batching`): the windows of every caller in flight are decoded together on one
  thread, each decoder pass reading the weights once for all of them. Callers do not change: the
  pipeline's chunk threads call `transcribe` and wait (WHISPER_BATCH_SIZE of them at once).
- How much whisper work runs at once is one bound per process (`CallSlots`, shared by every model's
  transcriber), taken around every pass whichever backend runs it.
- On top of every call: the hallucination guard (`worker.engine.guard`, applied by `worker.engine.guarded`):
  its filters, and its retries (beam search, then greedy decoding over the full context) of a decode
  that looks like a failure.
"""

# OMP_WAIT_POLICY / GOMP_SPINCOUNT are set by `worker.engine` (this package's __init__), before libwhisper loads.
import contextlib
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from loguru import logger

from worker.engine import libwhisper
from worker.engine.backends import Backend, Batch, make_backend
from worker.engine.guard import GUARD_ON, GuardOptions
from worker.engine.guarded import GuardedDecoding
from worker.engine.native_segments import word_tokens
from worker.engine.options import (
    AUDIO_CTX_STEP,
    FRAMES_PER_SECOND,
    FULL_AUDIO_CTX,
    MAX_FITTED_AUDIO_CTX,
    SAMPLE_RATE,
    DecodingOptions,
    Task,
)
from worker.engine.passes import EngineStats
from worker.engine.segments import Segment, TokenLogprob, Transcription, Word
from worker.errors import TranscriptionError

# Re-exported: the pipeline, the service and the benchmark import these from here.
__all__ = [
    "AUDIO_CTX_STEP",
    "FRAMES_PER_SECOND",
    "FULL_AUDIO_CTX",
    "MAX_FITTED_AUDIO_CTX",
    "SAMPLE_RATE",
    "Backend",
    "CallSlots",
    "DecodingOptions",
    "Segment",
    "Task",
    "TokenLogprob",
    "Transcription",
    "WhisperTranscriber",
    "Word",
    "available_cpus",
    "threads_per_call",
    "word_tokens",
]


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and cpusets)."""
    return len(os.sched_getaffinity(0))


def threads_per_call(concurrent_calls: int, *, cpus: int | None = None, requested: int = 0) -> int:
    """Threads for each whisper call so that threads x concurrent calls <= CPUs.

    `requested` (WHISPER_THREADS) wins when set, capped to the same budget.
    """
    budget = max(1, (cpus or available_cpus()) // max(1, concurrent_calls))
    return min(requested, budget) if requested > 0 else budget


class CallSlots:
    """At most `limit` whisper calls in progress at once across every transcriber sharing this;
    counts them (`in_progress`, `peak`).

    One per process (the wiring makes it and hands it to each model's transcriber): the state pools
    bound memory per model and encoder layout, this bounds the calls that compete for the CPUs.
    Taken before a state is borrowed, so a waiting call holds no state.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._slots = threading.BoundedSemaphore(self.limit)
        self._lock = threading.Lock()
        self._in_progress = 0
        self._peak = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._slots:
            with self._lock:
                self._in_progress += 1
                self._peak = max(self._peak, self._in_progress)
            try:
                yield
            finally:
                with self._lock:
                    self._in_progress -= 1

    @property
    def in_progress(self) -> int:
        """Calls running now."""
        return self._in_progress

    @property
    def peak(self) -> int:
        """The most calls that ran at once since this was made."""
        return self._peak


class WhisperTranscriber:
    """Thread-safe transcription over one loaded model; create one per process and share it.

    `max_concurrent_calls` sizes its state pools and its own bound on calls at once; `calls`, when
    given, bounds them instead, together with every other transcriber given the same CallSlots
    (extra callers wait); `n_threads` is the default number of threads per call; `guard`, the
    hallucination guard's rules (`worker.engine.guard`), applied to every call. `batch_size` > 1: greedy
    calls are decoded that many at once by the batched engine (with the patched libwhisper), which
    computes with `engine_threads` (default: every CPU); `batch_size` is then how many callers to keep
    waiting on it (`in_flight`).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        max_concurrent_calls: int = 1,
        n_threads: int | None = None,
        beam_size: int = 1,
        decoding: DecodingOptions | None = None,
        backend: Backend = "auto",
        calls: CallSlots | None = None,
        guard: GuardOptions = GUARD_ON,
        batch_size: int = 1,
        engine_threads: int | None = None,
    ) -> None:
        logger.info("Initializing shared WhisperTranscriber instance...")
        self.model_path = Path(model_path)
        self.max_concurrent_calls = max(1, max_concurrent_calls)
        self.calls = calls or CallSlots(self.max_concurrent_calls)
        self.n_threads = n_threads or threads_per_call(self.max_concurrent_calls)
        self.beam_size = beam_size
        self.decoding = decoding = decoding or DecodingOptions()
        batch = Batch(batch_size, engine_threads or available_cpus())
        self._backend = make_backend(
            self.model_path, self.max_concurrent_calls, beam_size, decoding, backend, hold=self.calls.hold, batch=batch
        )
        self._guarded = GuardedDecoding(self._backend, guard, beam_size=beam_size)
        self.guard = self._guarded.guard
        engine = self._backend.engine
        logger.info(
            "WhisperTranscriber ready: model {}, backend {}, {}",
            self.model_path.name,
            self._backend.name,
            f"batched: up to {engine.max_batch} windows at once x {engine.n_threads} threads"
            if engine
            else f"up to {self.calls.limit} concurrent calls x {self.n_threads} threads",
        )

    @property
    def backend(self) -> str:
        return self._backend.name

    def engine_stats(self) -> EngineStats | None:
        """Where the batched engine's time went so far (None without the engine): the profile's source."""
        engine = self._backend.engine
        return engine.stats.snapshot() if engine else None

    @property
    def in_flight(self) -> int:
        """Calls worth keeping waiting on this transcriber at once: the batch, or its concurrent calls."""
        engine = self._backend.engine
        return engine.max_batch if engine else self.max_concurrent_calls

    @property
    def multilingual(self) -> bool:
        return self._backend.multilingual

    @property
    def eot(self) -> int:
        """The model's end-of-text token id: ids from it up are special tokens (timestamps, ...)."""
        return self._backend.eot

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        task: Task = "transcribe",
        n_threads: int | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
    ) -> Transcription:
        """Transcribe 16 kHz mono float32 `audio`. `language=None` detects it (multilingual models).

        `prompt` conditions the decoder (spellings, style); `temperature` > 0 samples instead of taking
        the likeliest token, so the text is no longer repeatable; `word_timestamps` fills each
        segment's `words`.
        """
        audio = _as_model_input(audio)
        n_threads = n_threads or self.n_threads
        try:
            probability = None
            if language is None and self.multilingual:
                language, probability = likeliest(self._backend.detect_language(audio, n_threads=n_threads))
            decode = functools.partial(
                self._backend.transcribe,
                audio,
                n_threads=n_threads,
                language=language or "en",
                task=task,
                prompt=prompt,
                temperature=temperature,
                word_timestamps=word_timestamps,
            )
            result = self._guarded(decode, audio.size, sampled=temperature > 0)
        except (libwhisper.NativeCallError, RuntimeError) as exc:
            raise TranscriptionError(f"whisper.cpp failed: {exc}") from exc
        if self.decoding.no_timestamps and result.segments:
            # whisper.cpp's times are meaningless without timestamp tokens (either backend): the
            # text spans the call's audio.
            seconds = round(audio.size / SAMPLE_RATE, 2)
            words = tuple(w for s in result.segments for w in s.words or ()) if word_timestamps else None
            tokens = tuple(t for s in result.segments for t in s.tokens)
            logprobs = tuple(p for s in result.segments for p in s.logprobs or ())
            whole = Segment(0.0, seconds, result.text, tokens=tokens, words=words, logprobs=logprobs)
            result = dataclasses.replace(result, segments=(whole,))
        return dataclasses.replace(result, language_probability=probability)

    def detect_language(
        self, audio: np.ndarray, *, n_threads: int | None = None, among: Sequence[str] = ()
    ) -> tuple[str, float]:
        """(language code, probability) from the first 30 s of `audio`; multilingual models only.
        `among`: the languages it may be (OpenAI's `languages`), the probability then among them."""
        if not self.multilingual:
            raise ValueError(f"{self.model_path.name} is English-only: it cannot detect languages")
        audio = _as_model_input(audio)
        return likeliest(self._backend.detect_language(audio, n_threads=n_threads or self.n_threads), among)

    def close(self) -> None:
        self._backend.close()


def likeliest(probabilities: dict[str, float], among: Sequence[str] = ()) -> tuple[str, float]:
    """The likeliest language and its probability; with `among`, the likeliest of those, its probability
    renormalised over them (how sure detection is between the languages the audio may be in)."""
    choices = {code: probabilities.get(code, 0.0) for code in among} if among else probabilities
    best = max(choices, key=choices.__getitem__)
    total = sum(choices.values())
    return best, (choices[best] / total if total > 0 else 0.0)


def _as_model_input(audio: np.ndarray) -> np.ndarray:
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)
