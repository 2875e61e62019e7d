"""One shared, thread-safe whisper.cpp transcriber per process (the only importer of pywhispercpp).

Design (why it looks like this):
- A whisper.cpp context holds the weights; `whisper_full` on one context from two threads
  crashes, and a pywhispercpp `Model` is one context. Loading a Model per thread or per chunk
  costs a full copy of the weights and a load each time (this is what made the old parallel
  mode slower than sequential).
- whisper.cpp's own answer is one context plus one `whisper_state` per concurrent call. The
  "native" backend does exactly that through `worker.engine.libwhisper.context` (ctypes over the
  libwhisper that the pinned pywhispercpp wheel ships): one copy of the weights, a small
  state per call, states reused from a bounded pool.
- The ctypes route depends on the by-value `whisper_full_params` layout, so it is verified at
  start-up; if it does not match, the "pool" backend takes over: a bounded pool of
  pywhispercpp Models (a copy of the weights each, but correct), and a log line says so.
- Decoding parameters are built per call into a local struct (native) or passed in full on
  every call to a Model nobody else is using (pool), so no call changes another's settings.
- The ctypes calls release the GIL, so calls on separate states really run in parallel. How many
  run at once is one bound per process (`CallSlots`, shared by every model's transcriber), taken
  around every whisper_full and language detection whichever pool its state comes from.
"""

# OMP_WAIT_POLICY is set by `worker.engine` (this package's __init__), before the imports below.
import contextlib
import dataclasses
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

import _pywhispercpp  # the binding; loads the bundled libwhisper and its libgomp
import numpy as np
from loguru import logger
from pywhispercpp.model import Model

from worker.engine.guard import GUARD_ON, GuardOptions, assess, filter_segments, needs_retry, preferred
from worker.engine.libwhisper import context as libwhisper
from worker.engine.segments import Segment, Transcription, Word
from worker.errors import TranscriptionError

Task = Literal["transcribe", "translate"]
Backend = Literal["auto", "native", "pool"]
T = TypeVar("T")


SAMPLE_RATE = 16000  # what whisper.cpp takes: 16 kHz mono float32
# The encoder's context, in frames of 20 ms (whisper's 30 s window is 1500 of them).
FRAMES_PER_SECOND = 50
FULL_AUDIO_CTX = 1500
# With flash attention whisper.cpp pads the encoder's and the cross-attention's K/V to a multiple
# of 256 frames and masks none of the padding, so a context that is not such a multiple reads rows
# that earlier calls on the same state left there (whisper.cpp 1.8.5, whisper_build_graph_encoder /
# _cross / _decoder): the text would depend on what the state did before. A multiple of 256 reads
# only rows it wrote itself. 1536 is over the model's 1500, so fitted contexts stop at 1280.
AUDIO_CTX_STEP = 256
MAX_FITTED_AUDIO_CTX = 1280


@dataclass(frozen=True)
class DecodingOptions:
    """How each whisper.cpp call runs (the levers measured in cmd/bench).

    `fit_audio_ctx`: encode only as many frames as the call's audio needs (plus `audio_ctx_margin`
    frames, rounded up to 256) instead of always 30 s; audio too long for 1280 frames gets the full
    context on states that never see a fitted one. `temperature_fallback`: re-decode at rising
    temperatures when a decode looks bad (whisper.cpp's default); sampling then draws from a
    generator whisper.cpp seeds once per state, so the text would depend on the state's history.
    """

    fit_audio_ctx: bool = True
    audio_ctx_margin: int = 64
    temperature_fallback: bool = False
    # No timestamp tokens: a call's text comes back as one segment spanning its audio (a chunk's
    # subtitles would be one cue). Measured as a lever, off by default.
    no_timestamps: bool = False
    # Forbid the tokens whisper writes sound annotations with ("[", "(", "♪", ...). Off, whisper may write
    # "[BLANK_AUDIO]" or "[MUSIC]" where it hears no speech (the guard then strips them); on, it must
    # write words there instead ("Thank you.").
    suppress_nonspeech: bool = True

    def audio_ctx(self, n_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
        """The encoder context for this much audio: a multiple of 256, or 0 for the full 1500."""
        if not self.fit_audio_ctx:
            return 0
        frames = -(-n_samples * FRAMES_PER_SECOND // sample_rate) + self.audio_ctx_margin
        fitted = -(-frames // AUDIO_CTX_STEP) * AUDIO_CTX_STEP
        return fitted if fitted <= MAX_FITTED_AUDIO_CTX else 0


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


class _BoundedPool(Generic[T]):
    """Up to `size` resources made on demand by `factory`; a borrower waits when all are out."""

    def __init__(self, factory: Callable[[], T], size: int) -> None:
        self._factory = factory
        self._size = size
        self._idle: queue.LifoQueue[T] = queue.LifoQueue()
        self._created: list[T] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[T]:
        item = self._take()
        try:
            yield item
        finally:
            self._idle.put(item)

    def _take(self) -> T:
        with contextlib.suppress(queue.Empty):
            return self._idle.get_nowait()
        with self._lock:
            if len(self._created) < self._size:
                item = self._factory()
                self._created.append(item)
                return item
        return self._idle.get()

    @property
    def created(self) -> list[T]:
        return list(self._created)


class _NativeBackend:
    """One whisper.cpp context; one whisper_state per concurrent call.

    Two pools of states, so that no state ever mixes encoder layouts (see AUDIO_CTX_STEP): fitted
    contexts (multiples of 256) on one, the full 1500 frames and language detection (which
    encodes with the context of the state's previous call) on the other, created only when needed.
    The pools bound states, not calls: the transcriber's CallSlots bounds the calls across both.
    """

    name = "native"
    repeatable_beam_search = True  # every beam-search call has a fresh state (`_state_for`)

    def __init__(self, model_path: Path, max_concurrent_calls: int, decoding: DecodingOptions) -> None:
        lib = libwhisper.open_library()  # locates, loads, checks the ABI, forwards logs
        # Flash attention on, as pywhispercpp has it: a smaller encoder buffer per state (and the
        # 256-frame padding that DecodingOptions.audio_ctx respects).
        self._context = libwhisper.NativeContext(lib, model_path, flash_attn=True)
        self._decoding = decoding
        self._fitted = _BoundedPool(self._context.new_state, max_concurrent_calls)
        self._full = _BoundedPool(self._context.new_state, max_concurrent_calls)
        self.multilingual = self._context.is_multilingual()
        self.eot = self._context.eot

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        n_threads: int,
        language: str,
        task: Task,
        beam_size: int,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        full_context: bool = False,
    ) -> Transcription:
        audio_ctx = 0 if full_context else self._decoding.audio_ctx(audio.size)
        with self._state_for(audio_ctx, beam_size) as state:
            result = libwhisper.transcribe(
                self._context,
                state,
                audio,
                n_threads=n_threads,
                language=language,
                translate=task == "translate",
                beam_size=beam_size,
                audio_ctx=audio_ctx,
                temperature_fallback=self._decoding.temperature_fallback,
                no_timestamps=self._decoding.no_timestamps,
                suppress_nst=self._decoding.suppress_nonspeech,
                prompt=prompt,
                temperature=temperature,
                token_timestamps=word_timestamps,
            )
        segments = tuple(_segment(s, self._context.eot, words=word_timestamps) for s in result.segments)
        return Transcription(segments=segments, language=result.language)

    def _state_for(self, audio_ctx: int, beam_size: int) -> contextlib.AbstractContextManager[libwhisper.NativeState]:
        """A pooled state for greedy decoding; a fresh one, freed afterwards, for beam search.

        whisper.cpp 1.8.5's beam search draws each beam's candidates at random, also at temperature 0
        (`whisper_sample_token_topk`: a std::discrete_distribution over the decoder's generator), and
        decoder 0's generator is seeded once per state: on a reused state the text would depend on what
        the state decoded before (seen: the same 3 s clip gave "All Americans, ask not." and "Americans.
        Ask not." on one state). A fresh state starts from the same seed; making one costs a few ms.
        """
        if beam_size > 1:
            return self._context.new_state()
        return (self._fitted if audio_ctx else self._full).borrow()

    def fitted(self, n_samples: int) -> bool:
        """Whether a call on this much audio encodes a fitted context (not the full 30 s)."""
        return self._decoding.audio_ctx(n_samples) != 0

    def detect_language(self, audio: np.ndarray, *, n_threads: int) -> tuple[str, float]:
        with self._full.borrow() as state:
            return libwhisper.detect_language(self._context, state, audio, n_threads=n_threads)

    def close(self) -> None:
        for state in self._fitted.created + self._full.created:
            state.close()
        self._context.close()


class _ModelPoolBackend:
    """Fallback: a bounded pool of pywhispercpp Models, each used by one thread at a time."""

    name = "pool"
    # A Model is one context with one state, reused: its beam search depends on what it decoded before.
    repeatable_beam_search = False

    def __init__(self, model_path: Path, max_concurrent_calls: int, beam_size: int, decoding: DecodingOptions) -> None:
        self._path = str(model_path)
        self._decoding = decoding
        self._strategy = 1 if beam_size > 1 else 0  # fixed per Model at construction by pywhispercpp
        self._models = _BoundedPool(self._load, max_concurrent_calls)
        with self._models.borrow() as model:  # load one now, so a bad file fails at start-up
            self.multilingual = bool(_pywhispercpp.whisper_is_multilingual(model._ctx))
            self.eot = int(_pywhispercpp.whisper_token_eot(model._ctx))

    def _load(self) -> Model:
        return Model(
            self._path,
            params_sampling_strategy=self._strategy,
            redirect_whispercpp_logs_to=None,
            print_progress=False,
            print_realtime=False,
        )

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        n_threads: int,
        language: str,
        task: Task,
        beam_size: int,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        full_context: bool = True,  # every call here has the full context
    ) -> Transcription:
        with self._models.borrow() as model:
            # Every decoding parameter is passed on every call: pywhispercpp keeps them on the Model.
            segments = model.transcribe(
                audio,
                n_threads=n_threads,
                language=language,
                translate=task == "translate",
                no_context=True,
                suppress_blank=True,
                suppress_nst=self._decoding.suppress_nonspeech,
                single_segment=False,
                print_progress=False,
                print_realtime=False,
                # Always the full context: a Model is one state, so a fitted one could not be kept
                # apart from the full-length calls (see _NativeBackend).
                audio_ctx=0,
                temperature_inc=0.2 if self._decoding.temperature_fallback else 0.0,
                no_timestamps=self._decoding.no_timestamps,
                initial_prompt=prompt or "",
                temperature=temperature,
                token_timestamps=word_timestamps,
                **_sampling(beam_size),
            )
            native = [_pool_segment(model, i, s) for i, s in enumerate(segments)]
        return Transcription(
            segments=tuple(_segment(s, self.eot, words=word_timestamps) for s in native),
            language=language,
        )

    def fitted(self, n_samples: int) -> bool:
        return False

    def detect_language(self, audio: np.ndarray, *, n_threads: int) -> tuple[str, float]:
        with self._models.borrow() as model:
            (language, probability), _ = model.auto_detect_language(audio, n_threads=n_threads)
        return language, float(probability)

    def close(self) -> None:
        self._models = None


def _pool_segment(model: Model, index: int, segment) -> libwhisper.NativeSegment:
    """A pywhispercpp segment with its tokens, as the native backend reads them."""
    ctx = model._ctx
    tokens = []
    for j in range(_pywhispercpp.whisper_full_n_tokens(ctx, index)):
        data = _pywhispercpp.whisper_full_get_token_data(ctx, index, j)
        text = _pywhispercpp.whisper_token_to_bytes(ctx, data.id)
        tokens.append(libwhisper.NativeToken(data.id, text, data.p, data.plog, data.t0, data.t1, data.t_dtw))
    return libwhisper.NativeSegment(segment.t0 / 100.0, segment.t1 / 100.0, segment.text, tuple(tokens))


def _segment(native: libwhisper.NativeSegment, eot: int, *, words: bool) -> Segment:
    """Our Segment from whisper.cpp's: text stripped, token ids, their mean log probability, words if asked."""
    plogs = [t.plog for t in native.tokens]
    return Segment(
        start=native.start,
        end=native.end,
        text=native.text.strip(),
        tokens=tuple(t.id for t in native.tokens),
        avg_logprob=round(sum(plogs) / len(plogs), 4) if plogs else None,
        no_speech_prob=native.no_speech_prob,
        words=_words(native, eot) if words else None,
    )


def _words(segment: libwhisper.NativeSegment, eot: int) -> tuple[Word, ...]:
    """A segment's text tokens grouped into words: a token that starts with a space starts a word.

    Times come from whisper.cpp's token timestamps (`token_timestamps`: the timestamp-token
    probabilities, snapped to the signal's energy), measured in cmd/bench --words: on LJ Speech the
    median error of a sentence's first-word start and last-word end is a few hundredths of a second.
    DTW over the alignment heads was measured too and is left off (see docs/performance.md).
    """
    words = []
    for tokens in word_tokens(segment, eot):
        start = tokens[0].t0 / 100.0 if tokens[0].t0 >= 0 else segment.start
        end = tokens[-1].t1 / 100.0 if tokens[-1].t1 >= 0 else segment.end
        # Token bytes are joined before decoding: a multi-byte character may span two tokens.
        text = b"".join(t.text for t in tokens).decode("utf-8", errors="replace")
        start = min(max(start, segment.start), segment.end)
        words.append(
            Word(text, start, min(max(end, start), segment.end), round(sum(t.p for t in tokens) / len(tokens), 4))
        )
    return tuple(words)


def word_tokens(segment: libwhisper.NativeSegment, eot: int) -> list[list[libwhisper.NativeToken]]:
    """A segment's text tokens, one list per word: a token that starts with a space starts a word."""
    groups: list[list[libwhisper.NativeToken]] = []
    for token in segment.tokens:
        if token.id >= eot:  # timestamps and other special tokens carry no text
            continue
        if not groups or token.text.startswith(b" "):
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def _sampling(beam_size: int) -> dict:
    # Greedy keeps whisper.cpp's defaults (best_of 5 on temperature fallback), as the native path does.
    return {"beam_search": {"beam_size": beam_size, "patience": -1.0}} if beam_size > 1 else {}


class WhisperTranscriber:
    """Thread-safe transcription over one loaded model; create one per process and share it.

    `max_concurrent_calls` sizes its state pools and its own bound on calls at once; `calls`, when
    given, bounds them instead, together with every other transcriber given the same CallSlots
    (extra callers wait); `n_threads` is the default number of threads per call; `guard`, the
    hallucination guard's rules (`worker.engine.guard`), applied to every call.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        max_concurrent_calls: int = 1,
        n_threads: int | None = None,
        beam_size: int = 1,
        decoding: DecodingOptions = DecodingOptions(),
        backend: Backend = "auto",
        calls: CallSlots | None = None,
        guard: GuardOptions = GUARD_ON,
    ) -> None:
        logger.info("Initializing shared WhisperTranscriber instance...")
        self.model_path = Path(model_path)
        self.max_concurrent_calls = max(1, max_concurrent_calls)
        self.calls = calls or CallSlots(self.max_concurrent_calls)
        self.n_threads = n_threads or threads_per_call(self.max_concurrent_calls)
        self.beam_size = beam_size
        self.decoding = decoding
        self._backend = _make_backend(self.model_path, self.max_concurrent_calls, beam_size, decoding, backend)
        self.guard = _guard_for(self._backend, guard)
        logger.info(
            "WhisperTranscriber ready: model {}, backend {}, up to {} concurrent calls x {} threads",
            self.model_path.name,
            self._backend.name,
            self.calls.limit,
            self.n_threads,
        )

    @property
    def backend(self) -> str:
        return self._backend.name

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
                with self.calls.hold():
                    language, probability = self._backend.detect_language(audio, n_threads=n_threads)
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
            whole = Segment(0.0, seconds, result.text, tokens=tokens, words=words)
            result = dataclasses.replace(result, segments=(whole,))
        return dataclasses.replace(result, language_probability=probability)

    def _guarded(self, decode: Callable[..., Transcription], n_samples: int, *, sampled: bool) -> Transcription:
        """`decode` once, again as the guard's retry if it failed (the better one kept); its speech only.

        The retry is beam search at temperature 0 over the full 30 s encoder context: measured on 3 s
        windows of ../shared/audio, every loop tiny.en-f16 made with a fitted context was gone with
        the full one, and most were still there with beam search on the fitted one (docs/performance.md).
        A sampled call (temperature > 0) is not decoded again: its caller chose text that varies.
        """
        result = self._decode(decode, beam_size=self.beam_size)
        same = self.beam_size == self.guard.retry_beam_size and not self._backend.fitted(n_samples)
        if self.guard.retry and not sampled and not same:
            result = self._retried(decode, result)
        return dataclasses.replace(result, segments=filter_segments(result.segments, self.guard))

    def _retried(self, decode: Callable[..., Transcription], first: Transcription) -> Transcription:
        """`first`, or its retry when `first` needs one and the retry is preferred."""
        check = assess(first.segments, self.eot, self.guard)
        if not needs_retry(check, self.guard):
            return first
        retry = self._decode(decode, beam_size=self.guard.retry_beam_size, full_context=True)
        second = assess(retry.segments, self.eot, self.guard)
        kept = preferred(check, second, self.guard)
        logger.info(
            "A decode looked like a failure ({}); beam search of {} over the full context gave {}: kept the {}",
            check.summary(),
            self.guard.retry_beam_size,
            second.summary(),
            "retry" if kept else "first",
        )
        return retry if kept else first

    def _decode(self, decode: Callable[..., Transcription], **how: object) -> Transcription:
        # One call slot per whisper call: a retry waits for a slot like any other call.
        with self.calls.hold():
            return decode(**how)

    def detect_language(self, audio: np.ndarray, *, n_threads: int | None = None) -> tuple[str, float]:
        """(language code, probability) from the first 30 s of `audio`; multilingual models only."""
        if not self.multilingual:
            raise ValueError(f"{self.model_path.name} is English-only: it cannot detect languages")
        audio = _as_model_input(audio)
        with self.calls.hold():
            return self._backend.detect_language(audio, n_threads=n_threads or self.n_threads)

    def close(self) -> None:
        self._backend.close()


def _guard_for(backend: "_NativeBackend | _ModelPoolBackend", guard: GuardOptions) -> GuardOptions:
    """`guard`, without its retry on a backend whose beam search is not repeatable (the Model pool: its
    filters still run)."""
    if not guard.retry or backend.repeatable_beam_search:
        return guard
    logger.warning(
        "The hallucination guard's retry is off on the {} backend: its beam search depends on what each "
        "Model decoded before, and the guard's retry must give the same text for the same audio",
        backend.name,
    )
    return dataclasses.replace(guard, retry=False)


def _as_model_input(audio: np.ndarray) -> np.ndarray:
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _make_backend(
    model_path: Path, max_calls: int, beam_size: int, decoding: DecodingOptions, backend: Backend
) -> "_NativeBackend | _ModelPoolBackend":
    if backend == "pool":
        return _ModelPoolBackend(model_path, max_calls, beam_size, decoding)
    try:
        return _NativeBackend(model_path, max_calls, decoding)
    except (libwhisper.NativeABIError, OSError) as exc:
        if backend == "native":
            raise
        logger.warning(
            "whisper.cpp states via ctypes are unavailable ({}); falling back to a pool of up to {} "
            "pywhispercpp Models (one copy of the weights per concurrent call)",
            exc,
            max_calls,
        )
        return _ModelPoolBackend(model_path, max_calls, beam_size, decoding)
