"""The transcriber's backends: how whisper calls reach libwhisper (the only importer of pywhispercpp).

- "native" (`_NativeBackend`): one whisper.cpp context, one `whisper_state` per concurrent call
  (ctypes, `worker.engine.libwhisper`): one copy of the weights. With a libwhisper that carries the
  whisper_group patch (whisper/patches) and a batch size over 1, its greedy calls go through the
  batched engine (`worker.engine.batching`: one thread, windows in flight decoded together), and every
  other call runs on that engine's thread between two passes, so one thread computes.
- "pool" (`_ModelPoolBackend`): the fallback when the by-value struct layout does not match: a bounded
  pool of pywhispercpp Models (a copy of the weights each, but correct).

Both read whisper.cpp's segments into ours the same way (`worker.engine.native_segments`).

Every backend takes the process's bound on whisper work at once (`hold`, the transcriber's CallSlots)
around what it computes: a caller waiting for the engine holds nothing.
"""

import contextlib
import functools
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

from worker.engine import libwhisper
from worker.engine.batching import BatchedEngine
from worker.engine.greedy import Rules
from worker.engine.libwhisper.loader import has_group
from worker.engine.native_segments import to_segment
from worker.engine.options import DecodingOptions, Task
from worker.engine.segments import Transcription

Backend = Literal["auto", "native", "pool"]
Hold = Callable[[], contextlib.AbstractContextManager[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class Batch:
    """The batched engine's size (windows decoded at once; 1: no engine) and its threads."""

    size: int = 1
    threads: int = 1


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
    """One whisper.cpp context; one whisper_state per concurrent call, or the batched engine.

    Two pools of states, so that no state ever mixes encoder layouts (see options.AUDIO_CTX_STEP): fitted
    contexts (multiples of 256) on one, the full 1500 frames and language detection (which
    encodes with the context of the state's previous call) on the other, created only when needed.
    The pools bound states, not calls: `hold` bounds the calls across both.
    """

    name = "native"
    repeatable_beam_search = True  # every beam-search call has a fresh state (`_state_for`)

    def __init__(
        self, model_path: Path, max_concurrent_calls: int, decoding: DecodingOptions, *, hold: Hold, batch: Batch
    ) -> None:
        lib = libwhisper.open_library()  # locates, loads, checks the ABI, forwards logs
        # Flash attention on, as pywhispercpp has it: a smaller encoder buffer per state (and the
        # 256-frame padding that DecodingOptions.audio_ctx respects).
        self._context = libwhisper.NativeContext(lib, model_path, flash_attn=True)
        self._decoding = decoding
        self._hold = hold
        self._fitted = _BoundedPool(self._context.new_state, max_concurrent_calls)
        self._full = _BoundedPool(self._context.new_state, max_concurrent_calls)
        self.multilingual = self._context.is_multilingual()
        self.eot = self._context.eot
        self.engine = _engine(self._context, decoding, hold, batch)

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
        if self.engine is not None and self._batchable(audio, beam_size, temperature, word_timestamps):
            result = self.engine.transcribe(
                audio,
                language=language,
                translate=task == "translate",
                prompt=prompt,
                rules=Rules(
                    suppress_non_speech=self._decoding.suppress_nonspeech, no_timestamps=self._decoding.no_timestamps
                ),
                full_context=full_context,
            )
        else:
            call = functools.partial(
                self._whisper_full,
                audio,
                language=language,
                task=task,
                beam_size=beam_size,
                prompt=prompt,
                temperature=temperature,
                word_timestamps=word_timestamps,
                full_context=full_context,
            )
            result = self._run(call, n_threads)
        segments = tuple(to_segment(s, self._context.eot, words=word_timestamps) for s in result.segments)
        return Transcription(segments=segments, language=result.language)

    def _batchable(self, audio: np.ndarray, beam_size: int, temperature: float, word_timestamps: bool) -> bool:
        """Greedy, not sampled, no word times, one window: what the batched engine decodes."""
        assert self.engine is not None
        return beam_size == 1 and temperature == 0.0 and not word_timestamps and audio.size <= self.engine.max_samples

    def _run(self, call: Callable[[int], T], n_threads: int) -> T:
        """`call(threads)` on the engine's thread with all of its threads, or here within a call slot."""
        if self.engine is not None:
            engine = self.engine
            return engine.call(lambda: call(engine.n_threads))
        with self._hold():
            return call(n_threads)

    def _whisper_full(
        self,
        audio: np.ndarray,
        n_threads: int,
        *,
        language: str,
        task: Task,
        beam_size: int,
        prompt: str | None,
        temperature: float,
        word_timestamps: bool,
        full_context: bool,
    ) -> libwhisper.NativeResult:
        audio_ctx = 0 if full_context else self._decoding.audio_ctx(audio.size)
        with self._state_for(audio_ctx, beam_size) as state:
            return libwhisper.transcribe(
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
        if self.engine is not None:
            return n_samples <= self.engine.max_samples
        return self._decoding.audio_ctx(n_samples) != 0

    def detect_language(self, audio: np.ndarray, *, n_threads: int) -> dict[str, float]:
        if self.engine is not None:
            return self.engine.detect_language(audio)

        def detect(threads: int) -> dict[str, float]:
            with self._full.borrow() as state:
                return libwhisper.detect_language(self._context, state, audio, n_threads=threads)

        return self._run(detect, n_threads)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        for state in self._fitted.created + self._full.created:
            state.close()
        self._context.close()


def _engine(
    context: libwhisper.NativeContext, decoding: DecodingOptions, hold: Hold, batch: Batch
) -> BatchedEngine | None:
    """The batched engine, when asked for and this libwhisper has the whisper_group patch."""
    if batch.size <= 1:
        return None
    if not has_group(context.lib):
        logger.warning(
            "WHISPER_BATCH_SIZE={} asks for batched decoding, but this libwhisper has no whisper_group "
            "(the PyPI wheel's: `make native-whisper` builds the patched one); calls run one by one",
            batch.size,
        )
        return None
    return BatchedEngine(
        context, max_batch=batch.size, n_threads=batch.threads, audio_ctx_margin=decoding.audio_ctx_margin, hold=hold
    )


class _ModelPoolBackend:
    """Fallback: a bounded pool of pywhispercpp Models, each used by one thread at a time."""

    name = "pool"
    # A Model is one context with one state, reused: its beam search depends on what it decoded before.
    repeatable_beam_search = False

    def __init__(
        self, model_path: Path, max_concurrent_calls: int, beam_size: int, decoding: DecodingOptions, *, hold: Hold
    ) -> None:
        self._path = str(model_path)
        self._decoding = decoding
        self._hold = hold
        self.engine = None
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
        with self._hold(), self._models.borrow() as model:
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
            segments=tuple(to_segment(s, self.eot, words=word_timestamps) for s in native),
            language=language,
        )

    def fitted(self, n_samples: int) -> bool:
        return False

    def detect_language(self, audio: np.ndarray, *, n_threads: int) -> dict[str, float]:
        with self._hold(), self._models.borrow() as model:
            _, probabilities = model.auto_detect_language(audio, n_threads=n_threads)
        return {code: float(p) for code, p in probabilities.items()}

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


def _sampling(beam_size: int) -> dict:
    # Greedy keeps whisper.cpp's defaults (best_of 5 on temperature fallback), as the native path does.
    return {"beam_search": {"beam_size": beam_size, "patience": -1.0}} if beam_size > 1 else {}


WhisperBackend = _NativeBackend | _ModelPoolBackend


def make_backend(
    model_path: Path,
    max_calls: int,
    beam_size: int,
    decoding: DecodingOptions,
    backend: Backend,
    *,
    hold: Hold,
    batch: Batch = Batch(),
) -> WhisperBackend:
    """The native backend (batched when `batch` asks and the library can), else the Model pool."""
    if backend == "pool":
        return _ModelPoolBackend(model_path, max_calls, beam_size, decoding, hold=hold)
    try:
        return _NativeBackend(model_path, max_calls, decoding, hold=hold, batch=batch)
    except (libwhisper.NativeABIError, OSError) as exc:
        if backend == "native":
            raise
        logger.warning(
            "whisper.cpp states via ctypes are unavailable ({}); falling back to a pool of up to {} "
            "pywhispercpp Models (one copy of the weights per concurrent call)",
            exc,
            max_calls,
        )
        return _ModelPoolBackend(model_path, max_calls, beam_size, decoding, hold=hold)
