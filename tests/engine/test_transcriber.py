"""The shared WhisperTranscriber on real speech with real converted models."""

import functools
from concurrent.futures import ThreadPoolExecutor

import jiwer
import numpy as np
import pytest
from conftest import normalize, reference

from worker.engine import libwhisper
from worker.engine.transcriber import DecodingOptions, WhisperTranscriber, threads_per_call
from worker.media.audio import decode_audio
from worker.media.chunking import split

CLIPS = (
    "jfk_inaugural_1961.flac",
    "ls_test-clean_1089-134686-0000.flac",
    "ljspeech_LJ050-0131.wav",
    "ls_dev-clean_1272-128104-0000_leopard.wav",
)


def test_converted_tiny_en_transcribes_jfk_exactly(transcriber, jfk, audio_dir):
    result = transcriber.transcribe(jfk)

    assert jiwer.wer(normalize(reference(audio_dir, "jfk_inaugural_1961.flac")), normalize(result.text)) == 0
    assert result.language == "en"
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= 11.5


def test_state_api_is_used_on_this_machine(transcriber):
    # The ABI check passed for the pinned pywhispercpp: no silent fallback to a Model pool.
    assert transcriber.backend == "native"


def test_four_threads_on_one_transcriber_match_sequential_calls(transcriber, audio_dir):
    clips = [decode_audio(audio_dir / name) for name in CLIPS]
    one_thread = functools.partial(transcriber.transcribe, n_threads=1)
    sequential = [one_thread(clip) for clip in clips]

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(one_thread, clips))

    assert concurrent == sequential
    assert len({r.text for r in concurrent}) == 4


def test_model_pool_fallback_gives_the_same_transcript(tiny_en_path, transcriber, jfk):
    pool = WhisperTranscriber(tiny_en_path, max_concurrent_calls=1, n_threads=1, backend="pool")
    try:
        assert pool.backend == "pool"
        timed = [(s.start, s.end, s.text) for s in transcriber.transcribe(jfk, n_threads=1).segments]
        assert [(s.start, s.end, s.text) for s in pool.transcribe(jfk).segments] == timed
        with_words = pool.transcribe(jfk, n_threads=1, word_timestamps=True)
        assert [w.word for s in with_words.segments for w in s.words] == _words(transcriber, jfk)
        assert pool.transcribe(jfk, n_threads=2).text == transcriber.transcribe(jfk, n_threads=2).text
    finally:
        pool.close()


def _words(transcriber, audio) -> list[str]:
    return [w.word for s in transcriber.transcribe(audio, n_threads=1, word_timestamps=True).segments for w in s.words]


def test_word_timestamps_spell_each_segment_in_order_inside_it(transcriber, jfk):
    plain = transcriber.transcribe(jfk)
    timed = transcriber.transcribe(jfk, word_timestamps=True)

    assert timed.text == plain.text and all(s.words is None for s in plain.segments)
    for segment in timed.segments:
        words = segment.words
        assert "".join(w.word for w in words).strip() == segment.text
        assert all(w.word.startswith(" ") for w in words)  # whisper's pieces: a space before each word
        starts = [w.start for w in words]
        assert starts == sorted(starts)
        assert all(segment.start <= w.start <= w.end <= segment.end and 0 < w.probability <= 1 for w in words)
    words = [w for s in timed.segments for w in s.words]
    # "country" is said twice: at about 5 s and again at the end (10.5 s of 11).
    country = [w.start for w in words if w.word.strip(" .") == "country"]
    assert len(country) == 2 and 3.5 < country[0] < 6.5 and 9.0 < country[1] < 11.0


def test_segments_carry_their_tokens_and_log_probability(transcriber, jfk):
    segment = transcriber.transcribe(jfk).segments[0]
    lib = libwhisper.open_library()
    with libwhisper.NativeContext(lib, transcriber.model_path) as ctx:
        eot = ctx.eot
    text_tokens = [t for t in segment.tokens if t < eot]
    assert len(text_tokens) >= len(segment.text.split()) and any(t > eot for t in segment.tokens)  # timestamps
    assert -3.0 < segment.avg_logprob < 0.0


def test_no_speech_prob_matches_whisper_cpp_where_its_own_is_right_and_sees_silence(tiny_en_path, base_path, jfk):
    lib = libwhisper.open_library()
    quiet = np.random.default_rng(0).normal(0, 1e-3, 5 * 16000).astype(np.float32)
    options = {"language": "en", "translate": False, "beam_size": 1, "n_threads": 2}
    with libwhisper.NativeContext(lib, tiny_en_path, flash_attn=True) as ctx, ctx.new_state() as state:
        ours = libwhisper.transcribe(ctx, state, jfk, **options).segments[0].no_speech_prob
        # English-only model, no prompt: whisper.cpp's prompt is the one token it reads logits for.
        own = lib.whisper_full_get_segment_no_speech_prob_from_state(state.acquire(), 0)
        state.release()
        prompted = libwhisper.transcribe(ctx, state, jfk, prompt="President Kennedy.", **options)
    assert ours == pytest.approx(own, abs=1e-4) and ours < 0.2
    assert 0 <= prompted.segments[0].no_speech_prob < 0.2
    # Multilingual base: whisper.cpp's own value is stale (read from a logits row it never wrote; on
    # these two calls it gave 0.90 for speech and 6e-7 for the hiss).
    with libwhisper.NativeContext(lib, base_path, flash_attn=True) as ctx, ctx.new_state() as state:
        speech = libwhisper.transcribe(ctx, state, jfk, **options).segments
        hiss = libwhisper.transcribe(ctx, state, quiet, **options).segments
    assert all(s.no_speech_prob < 0.2 for s in speech)
    assert [s.text.strip() for s in hiss] == ["Thank you."]  # whisper's classic on silence, and it says so
    assert hiss[0].no_speech_prob > 0.6


def test_multilingual_base_detects_english(base_path, jfk, audio_dir):
    base = WhisperTranscriber(base_path, n_threads=2)
    try:
        result = base.transcribe(jfk)
        forced = base.transcribe(jfk, language="en")
        alone = base.detect_language(jfk)
        either = base.detect_language(jfk, among=("en", "de"))
        neither = base.detect_language(jfk, among=("de", "fr"))
    finally:
        base.close()

    # Detection among the languages the audio may be in: the likeliest of those, sure among them.
    assert alone[0] == either[0] == "en" and 0.5 < alone[1] <= either[1] <= 1.0
    assert neither[0] in ("de", "fr") and 0.5 <= neither[1] < 1.0

    assert base.multilingual
    assert result.language == "en" and result.language_probability > 0.5
    assert forced.language_probability is None  # nothing was detected when the caller chose
    assert jiwer.wer(normalize(reference(audio_dir, "jfk_inaugural_1961.flac")), normalize(result.text)) < 0.1


def test_rejects_non_mono_input(transcriber):
    with pytest.raises(ValueError, match="1-D"):
        transcriber.transcribe(np.zeros((2, 16000), dtype=np.float32))


@pytest.mark.parametrize(
    ("calls", "cpus", "requested", "expected"),
    [(1, 2, 0, 2), (2, 2, 0, 1), (4, 2, 0, 1), (2, 8, 0, 4), (1, 8, 3, 3), (2, 2, 4, 1)],
)
def test_threads_times_calls_fit_the_cpus(calls, cpus, requested, expected):
    assert threads_per_call(calls, cpus=cpus, requested=requested) == expected


def test_abi_mismatch_falls_back_to_a_model_pool_with_a_warning(tiny_en_path, jfk, monkeypatch, log_messages):
    # Pretend the pinned library were another release: the check must refuse the ctypes route.
    monkeypatch.setattr("worker.engine.libwhisper.abi.EXPECTED_VERSION", "9.9.9")

    fallback = WhisperTranscriber(tiny_en_path, max_concurrent_calls=1, n_threads=2)
    try:
        assert fallback.backend == "pool"
        assert "ask not what your country" in fallback.transcribe(jfk).text
    finally:
        fallback.close()
    warning = [m for level, m in log_messages if level == "WARNING" and "falling back to a pool" in m]
    assert warning and "9.9.9" in warning[0]


# --- the encoder context fitted to each chunk, and determinism -----------------------------------


@pytest.fixture(scope="module")
def lj_chunks(audio_dir) -> list[np.ndarray]:
    samples = decode_audio(audio_dir / "ljspeech_LJ001-0001_to_0032_concat.wav")
    return [samples[c.start : c.end] for c in split(samples)]


def test_fitted_contexts_are_multiples_of_256_and_long_audio_gets_the_full_context():
    options = DecodingOptions()
    assert options.audio_ctx(16000 * 5) == 512  # 250 frames + 64 of margin, rounded up
    assert options.audio_ctx(16000 * 24) == 1280
    assert options.audio_ctx(16000 * 25) == 0  # 1314 frames: over 1280, the full 1500
    assert DecodingOptions(fit_audio_ctx=False).audio_ctx(16000 * 5) == 0


def test_a_chunk_gives_the_same_text_whatever_ran_before_and_however_many_run_at_once(tiny_en_path, lj_chunks):
    """One thread per call: forward order, reverse order (each on one reused state), two at once."""
    fitted = WhisperTranscriber(tiny_en_path, max_concurrent_calls=2, n_threads=1)
    assert len({fitted.decoding.audio_ctx(c.size) for c in lj_chunks}) >= 3  # the lever is really in play
    one = functools.partial(fitted.transcribe, n_threads=1)

    forward = [one(c) for c in lj_chunks]
    backward = [one(c) for c in reversed(lj_chunks)][::-1]
    with ThreadPoolExecutor(max_workers=2) as pool:
        concurrent = list(pool.map(one, lj_chunks))

    assert backward == forward
    assert concurrent == forward


def test_the_trap_the_rounding_avoids_is_real(tiny_en_path, lj_chunks):
    """Unrounded contexts with flash attention read K/V rows that earlier calls left on the state:
    the same chunks in reverse order come out differently (whisper.cpp 1.8.5). If this ever fails,
    whisper.cpp masks its padding now, and the 256-frame rounding could go."""
    lib = libwhisper.open_library()
    with libwhisper.NativeContext(lib, tiny_en_path, flash_attn=True) as ctx, ctx.new_state() as state:

        def run(audio: np.ndarray) -> tuple:
            audio_ctx = -(-audio.size * 50 // 16000) + 64  # fitted but not rounded to 256
            return libwhisper.transcribe(
                ctx,
                state,
                audio,
                n_threads=1,
                language="en",
                translate=False,
                beam_size=1,
                audio_ctx=audio_ctx,
                temperature_fallback=False,
            ).segments

        forward = [run(c) for c in lj_chunks]
        backward = [run(c) for c in reversed(lj_chunks)][::-1]
    assert backward != forward


# --- quantized models --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny.en-q4_0", "tiny.en-q5_0", "tiny.en-q8_0", "base-q4_0", "base-q8_0"])
def test_each_quantized_variant_transcribes_jfk(offline_downloader, name, jfk, audio_dir):
    path = offline_downloader.ensure_model_exists(name)
    assert path.stat().st_size < 0.6 * offline_downloader.ensure_model_exists(name.split("-")[0]).stat().st_size
    result = WhisperTranscriber(path, n_threads=2).transcribe(jfk)
    assert jiwer.wer(normalize(reference(audio_dir, "jfk_inaugural_1961.flac")), normalize(result.text)) == 0


def test_a_prompt_steers_the_spelling_of_every_call(transcriber, lj_chunks, tiny_en_path):
    # LJ001-0010: "...the earliest book printed with movable types, the Gutenberg, or forty-two-line Bible".
    gutenberg = lj_chunks[1]
    plain = transcriber.transcribe(gutenberg).text
    prompted = transcriber.transcribe(gutenberg, prompt="The Gutenberg Bible.").text
    assert "Gutenberg" not in plain and "Gutenberg" in prompted, (plain[-120:], prompted[-120:])
    assert transcriber.transcribe(gutenberg).text == plain  # the prompt did not stay on the state
    pool = WhisperTranscriber(tiny_en_path, max_concurrent_calls=1, backend="pool")
    assert "Gutenberg" in pool.transcribe(gutenberg, prompt="The Gutenberg Bible.").text  # the fallback too


def test_a_temperature_reaches_whisper_and_makes_it_sample(transcriber, lj_chunks):
    """Seen in what whisper.cpp decodes, not in the struct we filled (the prompt: the test above)."""
    chunks = lj_chunks[:3]  # about 70 s of speech: sampling keeps every greedy token only by a fluke
    cold = [transcriber.transcribe(c).text for c in chunks]
    assert [transcriber.transcribe(c).text for c in chunks] == cold  # the premise: greedy is repeatable
    hot = [transcriber.transcribe(c, temperature=1.0).text for c in chunks]
    assert hot != cold and all(text.strip() for text in hot)
