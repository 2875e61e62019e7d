"""The batched engine: one thread runs every whisper pass of a model, decoding the windows in flight together.

Why: decoding one token reads every decoder weight (30 MB for tiny.en-q8_0, 50 MB for base); a pass for
eight windows reads them once for all eight (continuous batching, as inference servers do). Callers
are the pipeline's chunk threads, unchanged: each `transcribe` call queues its window and waits; the
engine thread admits waiting windows while there is room in the batch (mel, one encoder pass each),
then runs one decoder pass for every window in flight, picks each one's next token (worker.engine.
greedy) and hands a window back as soon as it is done, taking the next waiting one in its place.

One thread computes, with every CPU it was given: more waiting calls than cores is normal (threads wait,
the cores compute). Whisper calls the batch cannot take (beam search, word timestamps, audio longer than
one window, language detection) run on the same thread, between two passes (`call`).

Determinism: a window's tokens do not depend on what else is in the batch: with q8_0 and q4_0 weights
the batched logits are bitwise those of a window decoded alone (tests/engine/test_batching.py), and each
window's next token depends only on its own row.
"""

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from loguru import logger
from threadpoolctl import threadpool_limits

from worker.engine.greedy import Decoding, Rules, choose, no_speech_probability, read_vocabulary, segments
from worker.engine.libwhisper import NativeContext, NativeResult, NativeState, tokenize
from worker.engine.libwhisper.group import NativeGroup
from worker.engine.mel import FRAMES_PER_POSITION, HOP, log_mel

T = TypeVar("T")

SAMPLES_PER_POSITION = HOP * FRAMES_PER_POSITION  # 320: one encoder position per 20 ms
POSITION_STEP = 32  # encoder contexts are rounded up to this many positions


@dataclass
class EngineStats:
    """Where the engine's time went (seconds of wall time on its thread), for the profile (cmd/bench --profile)."""

    windows: int = 0
    audio_seconds: float = 0.0
    mel_seconds: float = 0.0
    encode_seconds: float = 0.0
    encoded_positions: int = 0
    decode_seconds: float = 0.0
    passes: int = 0
    tokens: int = 0  # decoder inputs: prompts and sampled tokens
    choose_seconds: float = 0.0
    call_seconds: float = 0.0  # whisper calls the batch cannot take (beam search, word times, ...)
    calls: int = 0

    def snapshot(self) -> "EngineStats":
        return dataclasses.replace(self)


@dataclass
class _Window:
    """A call's window, from its arrival to its result."""

    audio: np.ndarray
    prompt: list[int]
    n_audio_ctx: int
    decoding: Decoding
    language: str
    future: Future = field(default_factory=Future)
    state: NativeState | None = None
    handle: int = 0
    n_past: int = 0
    pending: list[int] = field(default_factory=list)  # tokens for the next decoder pass


class BatchedEngine:
    """Every whisper pass of one context, on one thread; up to `max_batch` windows decoded at once."""

    def __init__(
        self,
        context: NativeContext,
        *,
        max_batch: int,
        n_threads: int,
        audio_ctx_margin: int = 64,
        hold: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.context = context
        self.max_batch = max_batch
        self.n_threads = n_threads
        self._margin = audio_ctx_margin
        self._hold = hold  # taken around every pass (the process's bound on whisper work at once)
        # numpy's OpenBLAS threads spin after each product (the mel's filters here, the VAD's and the
        # pipeline's numpy elsewhere): 7% of the CPU stolen from ggml's threads on two cores. One BLAS thread,
        # process-wide and kept, as the speaker encoder does.
        threadpool_limits(limits=1, user_api="blas")
        self._group = NativeGroup(context, max_batch)
        self.vocabulary = read_vocabulary(context.lib, context.handle)
        self._n_text_ctx = context.lib.whisper_n_text_ctx(context.handle)
        self._idle: list[NativeState] = []
        self._waiting: collections.deque[_Window] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], object], Future]] = collections.deque()
        self._active: list[_Window] = []
        self._closing = False
        self.stats = EngineStats()  # written by the engine thread only
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="whisper-engine", daemon=True)
        self._thread.start()

    @property
    def max_samples(self) -> int:
        """The longest audio one window takes (30 s)."""
        return (self._group.max_audio_ctx - self._margin) * SAMPLES_PER_POSITION

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str,
        translate: bool,
        prompt: str | None,
        rules: Rules,
        full_context: bool = False,
    ) -> NativeResult:
        """Greedy decoding of one window (at most `max_samples`), its segments timed from its start;
        `full_context`: encoded over the whole 30 s window whisper was trained on, not fitted to the audio."""
        if audio.size > self.max_samples:
            raise ValueError(f"a window takes at most {self.max_samples} samples, got {audio.size}")
        window = _Window(
            audio=audio,
            prompt=self._prompt(language, translate, prompt, rules),
            n_audio_ctx=self._group.max_audio_ctx if full_context else self._audio_ctx(audio.size),
            decoding=Decoding(n_centiseconds=audio.size // HOP, max_tokens=self._n_text_ctx // 2 - 4, rules=rules),
            language=language,
        )
        self._submit(lambda: self._waiting.append(window))
        return window.future.result()

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """(language code, probability) of the first window of `audio`: one encoder pass over exactly its
        audio and one decoder pass from <|startoftranscript|> (whisper.cpp encodes the full 30 s for it)."""
        return self.call(lambda: self._detect(audio[: self.max_samples]))

    def _detect(self, audio: np.ndarray) -> tuple[str, float]:
        lib, ctx = self.context.lib, self.context.handle
        codes = [lib.whisper_lang_str(i).decode() for i in range(lib.whisper_lang_max_id() + 1)]
        tokens = np.array([lib.whisper_token_lang(ctx, i) for i in range(len(codes))])
        known = tokens < self.vocabulary.translate  # the model's own languages (large-v3 has one more)
        state = self._take_state()
        handle = state.acquire()
        try:
            n_audio_ctx = self._audio_ctx(audio.size)
            self._group.set_mel(handle, log_mel(audio, FRAMES_PER_POSITION * n_audio_ctx, n_mels=self._group.n_mels))
            self._group.encode([handle], [n_audio_ctx], self.n_threads)
            row = self._group.decode([handle], [[self.vocabulary.sot]], [0], self.n_threads)[0]
        finally:
            state.release()
            self._idle.append(state)
        scores = row[tokens[known]].astype(np.float64)
        probabilities = np.exp(scores - scores.max())
        best = int(np.argmax(probabilities))
        return [c for c, k in zip(codes, known, strict=True) if k][best], float(
            probabilities[best] / probabilities.sum()
        )

    def call(self, work: Callable[[], T]) -> T:
        """`work()` on the engine thread, between two passes (a whisper call the batch cannot take)."""
        future: Future = Future()
        self._submit(lambda: self._calls.append((work, future)))
        return future.result()

    def _submit(self, enqueue: Callable[[], None]) -> None:
        with self._cv:
            if self._closing:
                raise RuntimeError("the whisper engine is closed")
            enqueue()
            self._cv.notify()

    def _prompt(self, language: str, translate: bool, prompt: str | None, rules: Rules) -> list[int]:
        """[<|startofprev|>, the prompt's last tokens,] <|startoftranscript|>, language, task: as whisper.cpp."""
        lib, ctx, vocab = self.context.lib, self.context.handle, self.vocabulary
        language_token = lib.whisper_token_lang(ctx, lib.whisper_lang_id(language.encode())) if language else None
        tokens = vocab.prompt(
            language_token, vocab.translate if translate else vocab.transcribe, no_timestamps=rules.no_timestamps
        )
        if prompt:
            budget = self._n_text_ctx // 2 - 1  # what whisper.cpp keeps of a prompt
            tokens = [vocab.previous, *tokenize(self.context, prompt)[-budget:], *tokens]
        return tokens

    def _audio_ctx(self, n_samples: int) -> int:
        positions = -(-n_samples // SAMPLES_PER_POSITION) + self._margin
        return min(-(-positions // POSITION_STEP) * POSITION_STEP, self._group.max_audio_ctx)

    # --- the engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closing or self._waiting or self._calls or self._active)
                if self._closing:
                    break
                call = self._calls.popleft() if self._calls else None
                room = 0 if call else self.max_batch - len(self._active)
                admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            if call is not None:
                self._run_call(*call)
                continue
            if admitted:
                self._admit(admitted)
            if self._active:
                self._step()
        self._fail_all(RuntimeError("the whisper engine closed"))

    def _run_call(self, work: Callable[[], object], future: Future) -> None:
        started = time.perf_counter()
        try:
            with self._hold():
                future.set_result(work())
        except BaseException as exc:  # handed to the caller, whose call it was
            future.set_exception(exc)
        self.stats.calls += 1
        self.stats.call_seconds += time.perf_counter() - started

    def _admit(self, windows: list[_Window]) -> None:
        """Mel and one encoder pass for each window; then they join the batch."""
        ready = []
        started = time.perf_counter()
        for window in windows:
            try:
                window.state = self._take_state()
                window.handle = window.state.acquire()
                mel = log_mel(window.audio, FRAMES_PER_POSITION * window.n_audio_ctx, n_mels=self._group.n_mels)
                self._group.set_mel(window.handle, mel)
                ready.append(window)
            except Exception as exc:
                self._finish(window, exc)
        encoding = time.perf_counter()
        self.stats.mel_seconds += encoding - started
        if not ready:
            return
        try:
            with self._hold():
                self._group.encode([w.handle for w in ready], [w.n_audio_ctx for w in ready], self.n_threads)
        except Exception as exc:
            for window in ready:
                self._finish(window, exc)
            return
        stats = self.stats
        stats.encode_seconds += time.perf_counter() - encoding
        stats.windows += len(ready)
        stats.audio_seconds += sum(w.audio.size for w in ready) / (HOP * 100)
        stats.encoded_positions += sum(w.n_audio_ctx for w in ready)
        for window in ready:
            window.pending = window.prompt
        self._active += ready

    def _step(self) -> None:
        """One decoder pass for every window in flight, and each one's next token."""
        active = self._active
        started = time.perf_counter()
        try:
            with self._hold():
                logits = self._group.decode(
                    [w.handle for w in active], [w.pending for w in active], [w.n_past for w in active], self.n_threads
                )
        except Exception as exc:
            self._active = []
            for window in active:
                self._finish(window, exc)
            return
        decoded = time.perf_counter()
        for row, window in zip(logits, active, strict=True):
            if window.decoding.no_speech_prob is None:
                window.decoding.no_speech_prob = no_speech_probability(row, self.vocabulary)
        choices = choose(logits, [w.decoding for w in active], self.vocabulary)
        n_past_before = sum(w.n_past for w in active)
        still = []
        for window, choice in zip(active, choices, strict=True):
            window.n_past += len(window.pending)
            window.pending = [choice.token]
            window.decoding.add(choice, self.vocabulary)
            if window.decoding.done:
                self._finish(window, None)
            else:
                still.append(window)
        self._active = still
        stats = self.stats
        stats.passes += 1
        stats.tokens += sum(w.n_past for w in active) - n_past_before
        stats.decode_seconds += decoded - started
        stats.choose_seconds += time.perf_counter() - decoded

    def _finish(self, window: _Window, error: BaseException | None) -> None:
        if window.state is not None:
            if window.handle:
                window.state.release()
            self._idle.append(window.state)
            window.state = None
        if error is not None:
            window.future.set_exception(error)
            return
        result = NativeResult(segments(window.decoding, self.vocabulary), window.language)
        window.future.set_result(result)

    def _take_state(self) -> NativeState:
        return self._idle.pop() if self._idle else self.context.new_state()

    def _fail_all(self, error: BaseException) -> None:
        with self._cv:
            waiting, calls = list(self._waiting), list(self._calls)
            self._waiting.clear()
            self._calls.clear()
        for window in [*self._active, *waiting]:
            self._finish(window, error)
        self._active = []
        for _, future in calls:
            future.set_exception(error)

    def close(self) -> None:
        """Stop the thread (windows not done fail), then free the group and the states."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        self._group.close()
        for state in self._idle:
            state.close()
        logger.debug("whisper engine closed")
