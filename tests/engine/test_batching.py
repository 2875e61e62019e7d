"""whisper_group (whisper/patches) through our ctypes bindings, and the batched engine over it, on real speech.

The patch's promise: a window decoded in a batch gets the logits it gets decoded alone (bitwise, for the
quantized variants the worker ships by default), whatever else is in the batch, with windows of different
lengths joining and leaving between passes; and the engine's text does not depend on the batch.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import jiwer
import numpy as np
import pytest
from conftest import normalize, reference

from worker.engine import backends, libwhisper
from worker.engine.batching import BatchedEngine
from worker.engine.catalog import DEFAULT_VARIANTS, resolve_model
from worker.engine.greedy import Rules
from worker.engine.libwhisper.group import NativeGroup
from worker.engine.libwhisper.loader import has_group, open_library
from worker.engine.mel import log_mel
from worker.engine.transcriber import WhisperTranscriber
from worker.media.audio import decode_audio
from worker.media.chunking import split

SHIPPED = sorted(DEFAULT_VARIANTS.values())  # tiny.en-q8_0, base-q4_0


@pytest.fixture(scope="module")
def lj_windows(audio_dir) -> list[np.ndarray]:
    """Real speech cut at pauses into windows of different lengths (5-24 s)."""
    samples = decode_audio(audio_dir / "ljspeech_LJ001-0001_to_0032_concat.wav")
    return [samples[c.start : c.end] for c in split(samples)]


@pytest.fixture(scope="module")
def contexts(offline_downloader):
    opened = {}
    yield lambda name: opened.setdefault(
        name, libwhisper.NativeContext(open_library(), offline_downloader.ensure_model_exists(name), flash_attn=True)
    )
    for context in opened.values():
        context.close()


def test_the_loaded_libwhisper_carries_the_patch():
    # `make install` builds the patched library (make native-whisper); without it the engine is off.
    assert has_group(open_library())


class _Run:
    """Windows on their own states, fed to group passes; every logits row kept per window."""

    def __init__(self, context, windows, steps):
        self.group = NativeGroup(context, 16)
        self.states = [context.new_state() for _ in windows]
        self.handles = [s.acquire() for s in self.states]
        self.windows = windows
        self.steps = steps
        self.sot = context.lib.whisper_token_sot(context.handle)
        self.eot = context.eot

    def rows(self, joins: dict[int, int]) -> dict[int, np.ndarray]:
        """Window i joins at pass joins[i] (after one encoder pass) and leaves `steps` passes later; each
        feeds back its own likeliest text token, so what it reads never depends on the others."""
        kept: dict[int, list[np.ndarray]] = {i: [] for i in joins}
        tokens, past = {i: [self.sot] for i in joins}, dict.fromkeys(joins, 0)
        for step in range(max(joins.values()) + self.steps):
            joining = [i for i, j in joins.items() if j == step]
            if joining:
                for i in joining:
                    self.group.set_mel(self.handles[i], log_mel(self.windows[i], 2 * self._ctx(i)))
                self.group.encode([self.handles[i] for i in joining], [self._ctx(i) for i in joining], 2)
            active = [i for i, j in joins.items() if j <= step < j + self.steps]
            logits = self.group.decode(
                [self.handles[i] for i in active], [tokens[i] for i in active], [past[i] for i in active], 2
            )
            for i, row in zip(active, logits, strict=True):
                kept[i].append(row)
                past[i] += len(tokens[i])
                tokens[i] = [int(np.argmax(row[: self.eot]))]
        return {i: np.stack(rows) for i, rows in kept.items()}

    def _ctx(self, i: int) -> int:
        return -(-self.windows[i].size // 320) + 32

    def close(self):
        self.group.close()
        for state in self.states:
            state.release()
            state.close()


@pytest.mark.parametrize("name", SHIPPED)
def test_batched_logits_equal_each_window_decoded_alone(contexts, lj_windows, name):
    """Batches of 1 to 16 windows of different lengths, joining and leaving at different passes: every
    logits row bitwise the one the window gets alone."""
    windows = [lj_windows[i % len(lj_windows)] for i in range(16)]
    run = _Run(contexts(name), windows, steps=6)
    try:
        alone = {i: run.rows({i: 0})[i] for i in range(len(windows))}
        for size in (2, 3, 5, 8, 16):
            together = run.rows({i: (i * 3) % 4 for i in range(size)})  # staggered joins and leaves
            for i in range(size):
                assert np.array_equal(together[i], alone[i]), f"{name}: window {i} of a batch of {size}"
    finally:
        run.close()


def test_unquantized_weights_give_the_same_text_batched(offline_downloader, lj_windows):
    """f16 products differ in the last bits between one window and several (a different kernel), so the
    logits are not bitwise equal there; the text still is, on real speech."""
    context = libwhisper.NativeContext(
        open_library(), offline_downloader.ensure_model_exists(resolve_model("tiny.en-f16")), flash_attn=True
    )
    try:
        texts = {size: _engine_texts(context, lj_windows[:8], size) for size in (1, 8)}
    finally:
        context.close()
    assert texts[8] == texts[1]


def _engine_texts(context, windows, size: int) -> list[str]:
    engine = BatchedEngine(context, max_batch=size, n_threads=2)
    try:
        with ThreadPoolExecutor(max_workers=size) as pool:
            results = list(pool.map(lambda w: _transcribe(engine, w), windows))
    finally:
        engine.close()
    return [" ".join(s.text for s in r.segments) for r in results]


def _transcribe(engine: BatchedEngine, audio: np.ndarray) -> libwhisper.NativeResult:
    return engine.transcribe(audio, language="en", translate=False, prompt=None, rules=Rules())


@pytest.mark.parametrize("name", SHIPPED)
def test_the_engine_gives_each_window_the_text_it_gets_alone_at_any_concurrency(contexts, lj_windows, name):
    context = contexts(name)
    alone = _engine_texts(context, lj_windows, 1)
    assert _engine_texts(context, lj_windows, 8) == alone
    assert _engine_texts(context, lj_windows[::-1], 5)[::-1] == alone
    assert sum(len(t.split()) for t in alone) > 400  # real text, not empty windows


def test_the_engine_transcribes_real_speech_as_well_as_whisper_full(contexts, audio_dir):
    """JFK exactly; LibriSpeech and LJ Speech clips no worse than whisper_full on the same model."""
    context = contexts("tiny.en-q8_0")
    engine = BatchedEngine(context, max_batch=4, n_threads=2)
    names = ("jfk_inaugural_1961.flac", "ls_test-clean_1089-134686-0000.flac", "ljspeech_LJ050-0131.wav")
    try:
        with context.new_state() as state:
            for name in names:
                audio = decode_audio(audio_dir / name)
                ours = " ".join(s.text for s in _transcribe(engine, audio).segments)
                full = libwhisper.transcribe(
                    context, state, audio, n_threads=2, language="en", translate=False, beam_size=1
                )
                theirs = " ".join(s.text for s in full.segments)
                truth = normalize(reference(audio_dir, name))
                assert jiwer.wer(truth, normalize(ours)) <= jiwer.wer(truth, normalize(theirs)), name
                if name.startswith("jfk"):
                    assert jiwer.wer(truth, normalize(ours)) == 0
    finally:
        engine.close()


def test_segments_are_timed_inside_the_window_in_order(contexts, lj_windows):
    engine = BatchedEngine(contexts("tiny.en-q8_0"), max_batch=2, n_threads=2)
    try:
        result = _transcribe(engine, lj_windows[0])
    finally:
        engine.close()
    seconds = lj_windows[0].size / 16000
    assert len(result.segments) >= 2
    assert all(0 <= s.start <= s.end <= seconds + 0.02 for s in result.segments)
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    assert all(s.no_speech_prob is not None and s.no_speech_prob < 0.2 for s in result.segments)
    assert all(t.plog <= 0 and 0 < t.p <= 1 for s in result.segments for t in s.tokens)


def test_group_refuses_what_it_cannot_do_with_typed_errors(contexts, lj_windows):
    context = contexts("tiny.en-q8_0")
    group = NativeGroup(context, 2)
    states = [context.new_state() for _ in range(3)]
    handles = [s.acquire() for s in states]
    try:
        with pytest.raises(ValueError):
            group.decode(handles, [[1], [1], [1]], [0, 0, 0], 1)  # more states than the group takes
        with pytest.raises(libwhisper.NativeCallError) as unencoded:
            group.decode(handles[:1], [[context.eot]], [0], 1)
        assert unencoded.value.code == -3
        with pytest.raises(libwhisper.NativeCallError) as no_mel:
            group.encode(handles[:1], [100], 1)
        assert no_mel.value.code == -3
        group.set_mel(handles[0], log_mel(lj_windows[0][:16000], 200))
        with pytest.raises(libwhisper.NativeCallError) as too_long:
            group.encode(handles[:1], [1501], 1)
        assert too_long.value.code == -2
        group.encode(handles[:1], [100], 1)
        with pytest.raises(libwhisper.NativeCallError) as past_context:
            group.decode(handles[:1], [[context.eot]], [448], 1)
        assert past_context.value.code == -2
        with pytest.raises(libwhisper.NativeCallError) as not_a_token:
            group.decode(handles[:1], [[10**6]], [0], 1)
        assert not_a_token.value.code == -4
        with pytest.raises(libwhisper.NativeCallError) as twice:
            group.encode(handles[:1], [100], 1)
            group.decode([handles[0], handles[0]], [[1], [1]], [0, 0], 1)
        assert twice.value.code == -1
    finally:
        group.close()
        for state in states:
            state.release()
            state.close()


def test_calls_the_batch_cannot_take_run_on_the_engine_thread(tiny_en_path, jfk):
    """Beam search and word timestamps go to whisper_full, on the engine's own thread, one at a time."""
    transcriber = WhisperTranscriber(tiny_en_path, batch_size=4, beam_size=1)
    engine = transcriber._backend.engine
    seen: list[str] = []
    original = engine.call
    engine.call = lambda work: original(lambda: (seen.append(threading.current_thread().name), work())[1])
    try:
        batched = transcriber.transcribe(jfk)
        words = transcriber.transcribe(jfk, word_timestamps=True)
    finally:
        transcriber.close()
    assert seen == ["whisper-engine"]  # the word-timestamp call, not the greedy one
    assert normalize(words.text) == normalize(batched.text)
    assert words.segments[0].words


def test_without_the_patch_calls_run_one_by_one_with_a_warning(tiny_en_path, jfk, monkeypatch, log_messages):
    monkeypatch.setattr(backends, "has_group", lambda lib: False)
    transcriber = WhisperTranscriber(tiny_en_path, batch_size=8)
    try:
        assert transcriber._backend.engine is None and transcriber.in_flight == 1
        assert "fellow americans" in normalize(transcriber.transcribe(jfk).text)
    finally:
        transcriber.close()
    assert any("no whisper_group" in message for level, message in log_messages if level == "WARNING")


def test_closing_the_engine_fails_what_waits_and_refuses_new_work(contexts, lj_windows):
    engine = BatchedEngine(contexts("tiny.en-q8_0"), max_batch=1, n_threads=1)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(_transcribe, engine, w) for w in lj_windows[:3]]
        engine.close()
        outcomes = [f.exception(timeout=60) for f in futures]
    assert all(o is None or isinstance(o, RuntimeError) for o in outcomes)
    with pytest.raises(RuntimeError):
        _transcribe(engine, lj_windows[0])


def test_the_engine_detects_the_language_of_a_window_in_one_encoder_pass(base_path, audio_dir):
    transcriber = WhisperTranscriber(base_path, batch_size=2)
    try:
        for name in ("jfk_inaugural_1961.flac", "librivox_shakespeare_sonnet001.mp3"):
            language, probability = transcriber.detect_language(decode_audio(audio_dir / name))
            assert (language, probability > 0.8) == ("en", True), name
        stats = transcriber.engine_stats()
    finally:
        transcriber.close()
    assert stats.calls == 2 and stats.windows == 0  # on the engine's thread, not as windows of the batch
