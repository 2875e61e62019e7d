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
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
from loguru import logger
from threadpoolctl import threadpool_limits

from worker.engine.greedy import Decoding, Rules
from worker.engine.libwhisper import NativeContext, NativeResult, tokenize
from worker.engine.mel import FRAMES_PER_POSITION, HOP
from worker.engine.passes import Passes, Window

T = TypeVar("T")

SAMPLES_PER_POSITION = HOP * FRAMES_PER_POSITION  # 320: one encoder position per 20 ms
POSITION_STEP = 32  # encoder contexts are rounded up to this many positions


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
        self._passes = Passes(context, max_batch, n_threads, hold)
        self.vocabulary = self._passes.vocabulary
        self._n_text_ctx = context.lib.whisper_n_text_ctx(context.handle)
        self._waiting: collections.deque[Window] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], object], Future]] = collections.deque()
        self._closing = False
        self.stats = self._passes.stats  # written by the engine thread only
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="whisper-engine", daemon=True)
        self._thread.start()

    @property
    def max_samples(self) -> int:
        """The longest audio one window takes (30 s)."""
        return (self._passes.group.max_audio_ctx - self._margin) * SAMPLES_PER_POSITION

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
        window = Window(
            audio=audio,
            prompt=self._prompt(language, translate, prompt, rules),
            n_audio_ctx=self._passes.group.max_audio_ctx if full_context else self._audio_ctx(audio.size),
            decoding=Decoding(n_centiseconds=audio.size // HOP, max_tokens=self._n_text_ctx // 2 - 4, rules=rules),
            language=language,
        )
        self._submit(lambda: self._waiting.append(window))
        return window.future.result()

    def detect_language(self, audio: np.ndarray) -> dict[str, float]:
        """Each language's probability in the first window of `audio`: one encoder pass over exactly its
        audio and one decoder pass from <|startoftranscript|> (whisper.cpp encodes the full 30 s for it)."""
        audio = audio[: self.max_samples]
        return self.call(lambda: self._passes.detect(audio, self._audio_ctx(audio.size)))

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
        return min(-(-positions // POSITION_STEP) * POSITION_STEP, self._passes.group.max_audio_ctx)

    # --- the engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closing or self._waiting or self._calls or self._passes.active)
                if self._closing:
                    break
                call = self._calls.popleft() if self._calls else None
                room = 0 if call else self.max_batch - len(self._passes.active)
                admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            if call is not None:
                self._run_call(*call)
                continue
            if admitted:
                self._passes.admit(admitted)
            if self._passes.active:
                self._passes.step()
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

    def _fail_all(self, error: BaseException) -> None:
        with self._cv:
            waiting, calls = list(self._waiting), list(self._calls)
            self._waiting.clear()
            self._calls.clear()
        for window in [*self._passes.active, *waiting]:
            self._passes.finish(window, error)
        self._passes.active = []
        for _, future in calls:
            future.set_exception(error)

    def close(self) -> None:
        """Stop the thread (windows not done fail), then free the group and the states."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        self._passes.close()
        logger.debug("whisper engine closed")
