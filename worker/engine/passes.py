"""The engine thread's work on its batch: each window's mel and encoder pass, the decoder passes for every
window in flight, their tokens picked, finished windows handed back (worker.engine.batching runs it)."""

import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from worker.engine.greedy import Decoding, choose, no_speech_probability, read_vocabulary, segments
from worker.engine.libwhisper import NativeContext, NativeResult, NativeState
from worker.engine.libwhisper.group import NativeGroup
from worker.engine.mel import FRAMES_PER_POSITION, HOP, log_mel


@dataclass
class EngineStats:
    """Where the engine's time went (seconds of wall time on its thread), for the profile (cmd/bench --engine)."""

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
class Window:
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


class Passes:
    """The windows in flight and the passes over them; used by the engine thread only."""

    def __init__(
        self,
        context: NativeContext,
        max_batch: int,
        n_threads: int,
        hold: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.context = context
        self.n_threads = n_threads
        self._hold = hold  # taken around every pass (the process's bound on whisper work at once)
        self.group = NativeGroup(context, max_batch)
        self.vocabulary = read_vocabulary(context.lib, context.handle)
        self._idle: list[NativeState] = []
        self.active: list[Window] = []
        self.stats = EngineStats()

    def detect(self, audio: np.ndarray, n_audio_ctx: int) -> dict[str, float]:
        """Each language's probability, by code, from one encoder pass over `audio` and one decoder pass from <|startoftranscript|>."""
        lib, ctx = self.context.lib, self.context.handle
        codes = [lib.whisper_lang_str(i).decode() for i in range(lib.whisper_lang_max_id() + 1)]
        tokens = np.array([lib.whisper_token_lang(ctx, i) for i in range(len(codes))])
        known = tokens < self.vocabulary.translate  # the model's own languages (large-v3 has one more)
        state = self.take_state()
        handle = state.acquire()
        try:
            self.group.set_mel(handle, log_mel(audio, FRAMES_PER_POSITION * n_audio_ctx, n_mels=self.group.n_mels))
            self.group.encode([handle], [n_audio_ctx], self.n_threads)
            row = self.group.decode([handle], [[self.vocabulary.sot]], [0], self.n_threads)[0]
        finally:
            state.release()
            self._idle.append(state)
        scores = row[tokens[known]].astype(np.float64)
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        return dict(zip([c for c, k in zip(codes, known, strict=True) if k], probabilities.tolist(), strict=True))

    def admit(self, windows: list[Window]) -> None:
        """Mel and one encoder pass for each window; then they join the batch."""
        ready = []
        started = time.perf_counter()
        for window in windows:
            try:
                window.state = self.take_state()
                window.handle = window.state.acquire()
                mel = log_mel(window.audio, FRAMES_PER_POSITION * window.n_audio_ctx, n_mels=self.group.n_mels)
                self.group.set_mel(window.handle, mel)
                ready.append(window)
            except Exception as exc:
                self.finish(window, exc)
        encoding = time.perf_counter()
        self.stats.mel_seconds += encoding - started
        if not ready:
            return
        try:
            with self._hold():
                self.group.encode([w.handle for w in ready], [w.n_audio_ctx for w in ready], self.n_threads)
        except Exception as exc:
            for window in ready:
                self.finish(window, exc)
            return
        stats = self.stats
        stats.encode_seconds += time.perf_counter() - encoding
        stats.windows += len(ready)
        stats.audio_seconds += sum(w.audio.size for w in ready) / (HOP * 100)
        stats.encoded_positions += sum(w.n_audio_ctx for w in ready)
        for window in ready:
            window.pending = window.prompt
        self.active += ready

    def step(self) -> None:
        """One decoder pass for every window in flight, and each one's next token."""
        active = self.active
        started = time.perf_counter()
        try:
            with self._hold():
                logits = self.group.decode(
                    [w.handle for w in active], [w.pending for w in active], [w.n_past for w in active], self.n_threads
                )
        except Exception as exc:
            self.active = []
            for window in active:
                self.finish(window, exc)
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
                self.finish(window, None)
            else:
                still.append(window)
        self.active = still
        stats = self.stats
        stats.passes += 1
        stats.tokens += sum(w.n_past for w in active) - n_past_before
        stats.decode_seconds += decoded - started
        stats.choose_seconds += time.perf_counter() - decoded

    def finish(self, window: Window, error: BaseException | None) -> None:
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

    def take_state(self) -> NativeState:
        return self._idle.pop() if self._idle else self.context.new_state()

    def close(self) -> None:
        """Free the group and the idle states (the windows in flight were finished)."""
        self.group.close()
        for state in self._idle:
            state.close()
