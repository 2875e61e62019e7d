"""The hallucination guard: its rules as pure functions, then on real whisper output.

The real cases come from a search of 3 s windows (every 0.5 s) of ../shared/audio with every model
variant and the guard off (docs/performance.md, "The hallucination guard").
"""

import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import normalize

from worker.engine.guard import (
    GUARD_OFF,
    DecodeCheck,
    GuardOptions,
    assess,
    compression_ratio,
    drop_no_speech,
    filter_segments,
    needs_retry,
    preferred,
    repeated_tokens,
    strip_nonspeech,
    strip_segment,
)
from worker.engine.segments import Segment, Word
from worker.engine.transcriber import DecodingOptions, WhisperTranscriber
from worker.media.audio import SAMPLE_RATE, decode_audio

RULES = GuardOptions()
EOT = 50256  # tiny.en's: ids from here up are special tokens


def check(**fields) -> DecodeCheck:
    values = {"compression_ratio": 1.0, "repeated_tokens": 0, "text_tokens": 20, "avg_logprob": -0.3}
    return DecodeCheck(**{**values, "no_speech_prob": 0.1, **fields})


# --- the rules, pure ---------------------------------------------------------------------------


def test_compression_ratio_is_openai_whispers_and_high_only_for_text_that_repeats(audio_dir):
    sonnet = (audio_dir / "librivox_shakespeare_sonnet001.txt").read_text()  # 107 words: more than a call holds
    assert compression_ratio(sonnet) < RULES.compression_ratio_threshold
    assert compression_ratio("Ask not. " * 40) > 10
    assert compression_ratio("") == 0.0


def test_repeated_tokens_counts_the_extra_copies_of_the_most_repeated_ngram():
    assert repeated_tokens([7, 8, 9] * 3, max_ngram=16) == 6  # "Ask not. Ask not. Ask not."
    assert repeated_tokens([1, 2, 3, 4, 5, 6], max_ngram=16) == 0
    assert repeated_tokens([1, 2, *[5] * 10, 3], max_ngram=16) == 9  # one token said 10 times
    assert repeated_tokens([1, 2, 3, 4] * 2, max_ngram=3) == 0  # the n-gram is longer than looked for
    assert repeated_tokens([1, 2, 1, 2, 1, 3], max_ngram=16) == 2  # only whole extra copies count


def test_a_loop_is_compressible_text_or_a_repeat_over_much_of_the_decode():
    assert check(compression_ratio=2.5).loops(RULES)
    assert check(repeated_tokens=8, text_tokens=20).loops(RULES)  # "... salt, salt, salt, salt, salt"
    assert not check(repeated_tokens=6, text_tokens=12).loops(RULES)  # "no, no, no, no": under 8 tokens
    assert not check(repeated_tokens=10, text_tokens=80).loops(RULES)  # a short repeat in a long chunk
    assert not check().loops(RULES)


def test_a_retry_is_for_loops_and_improbable_decodes_but_not_for_silence():
    assert needs_retry(check(compression_ratio=5.0), RULES)
    assert needs_retry(check(avg_logprob=-1.2), RULES)
    assert not needs_retry(check(), RULES)
    assert not needs_retry(check(avg_logprob=-1.2, no_speech_prob=0.8), RULES)  # silence: dropped instead
    assert needs_retry(check(compression_ratio=5.0, avg_logprob=-0.1, no_speech_prob=0.8), RULES)
    assert not needs_retry(check(compression_ratio=5.0), dataclasses.replace(RULES, retry=False))


def test_the_retry_is_kept_unless_it_is_worse_by_the_same_rules():
    loop, clean, improbable = check(compression_ratio=9.0, avg_logprob=-0.1), check(), check(avg_logprob=-1.5)
    assert preferred(loop, clean, RULES)
    assert not preferred(clean, loop, RULES)
    assert preferred(improbable, clean, RULES) and not preferred(clean, improbable, RULES)
    # Failing the same rules: the shorter loop, then the likelier decode, and on a tie beam search's.
    assert not preferred(check(repeated_tokens=8, text_tokens=12), check(repeated_tokens=16, text_tokens=20), RULES)
    assert not preferred(loop, check(compression_ratio=3.0, avg_logprob=-0.2), RULES)
    assert preferred(loop, check(compression_ratio=3.0, avg_logprob=-0.1), RULES)
    assert not preferred(check(avg_logprob=-1.1), check(avg_logprob=-1.4), RULES)


def segment(text: str, *, no_speech: float | None = 0.1, logprob: float | None = -0.3, **fields) -> Segment:
    return Segment(0.0, 2.0, text, tokens=(1, 2, 3), avg_logprob=logprob, no_speech_prob=no_speech, **fields)


def test_drop_no_speech_needs_both_a_likely_silence_and_a_low_logprob():
    silence = segment("Thank you.", no_speech=0.83, logprob=-1.3)
    confident = segment("Thank you.", no_speech=0.83, logprob=-0.4)
    speech = segment("Thank you.", no_speech=0.2, logprob=-1.3)
    unknown = segment("Thank you.", no_speech=None, logprob=-1.3)  # the pool backend's
    assert drop_no_speech([silence, confident, speech, unknown], RULES) == (confident, speech, unknown)


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("♪ Oh, say can you see ♪", "Oh, say can you see"),
        ("[MUSIC]", ""),
        ("[BLANK_AUDIO]", ""),
        ("[ Silence ]", ""),
        ("(upbeat music)", ""),
        ("*music*", ""),
        ("Thank you. [APPLAUSE] Good night.", "Thank you. Good night."),
        ("*laughs* Okay.", "Okay."),
        ("♪♪♪", ""),
        ("(", ""),  # tiny.en on tones: an annotation begun, then the end of the decode
        ("\ufffd", ""),  # tiny.en on tones with suppress_nst: the first bytes of "♪"
        ("The end. [Music", "The end."),
        ("Twenty-four 2*3*4 is twenty-four.", "Twenty-four 2*3*4 is twenty-four."),
        ("He hoped there would be stew for dinner.", "He hoped there would be stew for dinner."),
    ],
)
def test_strip_nonspeech_removes_sound_annotations_only(text, stripped):
    assert strip_nonspeech(text) == stripped


def test_a_stripped_segment_keeps_its_spoken_words_and_an_annotation_only_one_goes():
    words = tuple(Word(w, i * 0.5, i * 0.5 + 0.4, 0.9) for i, w in enumerate([" Thank", " you.", " [MUSIC]"]))
    stripped = strip_segment(segment("Thank you. [MUSIC]", words=words))
    assert stripped.text == "Thank you." and [w.word for w in stripped.words] == [" Thank", " you."]
    assert stripped.tokens == (1, 2, 3)  # what whisper decoded, kept
    assert strip_segment(segment("[MUSIC]")) is None
    kept = segment("Good night.")
    assert strip_segment(kept) is kept


def test_filter_segments_runs_only_the_rules_switched_on():
    music, silence = segment("♪ [MUSIC] ♪"), segment("Thank you.", no_speech=0.9, logprob=-1.5)
    speech = segment("Good night.")
    assert filter_segments([music, silence, speech], RULES) == (speech,)
    assert filter_segments([music, silence, speech], GUARD_OFF) == (music, silence, speech)
    only_drop = dataclasses.replace(GUARD_OFF, drop_no_speech=True)
    assert filter_segments([music, silence, speech], only_drop) == (music, speech)


def test_assess_reads_text_tokens_only():
    # Timestamps (ids >= eot) rise through a loop: they must not hide it.
    tokens = tuple(t for i in range(10) for t in (EOT + 100 + i, 7, 8))
    loop = Segment(0.0, 3.0, "Ask not." * 10, tokens=tokens, avg_logprob=-0.1, no_speech_prob=0.1)
    measured = assess([loop], EOT, RULES)
    assert measured.text_tokens == 20 and measured.repeated_tokens == 18 and measured.loops(RULES)


# --- on real whisper output ----------------------------------------------------------------------


def window(audio_dir, name: str, start: float, seconds: float = 3.0) -> np.ndarray:
    samples = decode_audio(audio_dir / name)
    return samples[round(start * SAMPLE_RATE) : round((start + seconds) * SAMPLE_RATE)]


# Windows where tiny.en-f16 loops with the guard off (2 threads; the search's first finds).
LOOPING = (
    ("jfk_inaugural_1961.flac", 1.5),  # "Americans. Ask not. Ask not. Ask not. ..." for 219 tokens
    ("ls_test-clean_1089-134686-0000.flac", 1.5),  # "... and bruised p-t-t-t-t-t-t-..."
    ("ljspeech_LJ001-0001_to_0032_concat.wav", 156.0),  # "... splendid missiles, salt, salt, salt, ..."
)


@pytest.fixture(scope="module")
def unguarded(tiny_en_path):
    transcriber = WhisperTranscriber(tiny_en_path, max_concurrent_calls=2, n_threads=2, guard=GUARD_OFF)
    yield transcriber
    transcriber.close()


@pytest.fixture(scope="module")
def guarded(tiny_en_path):
    transcriber = WhisperTranscriber(tiny_en_path, max_concurrent_calls=2, n_threads=2)
    yield transcriber
    transcriber.close()


@pytest.mark.parametrize(("name", "start"), LOOPING)
def test_a_looping_decode_is_decoded_again_and_the_loop_is_gone(
    unguarded, guarded, audio_dir, name, start, log_messages
):
    clip = window(audio_dir, name, start)
    loop = unguarded.transcribe(clip)
    assert assess(loop.segments, unguarded.eot, RULES).loops(RULES), loop.text  # the premise

    fixed = guarded.transcribe(clip)

    assert not assess(fixed.segments, guarded.eot, RULES).loops(RULES), fixed.text
    assert len(fixed.text) < len(loop.text) / 2
    assert any("looked like a failure" in m and "kept the retry" in m for _, m in log_messages)


def test_the_jfk_loop_becomes_what_he_said(unguarded, guarded, audio_dir):
    clip = window(audio_dir, "jfk_inaugural_1961.flac", 1.5)
    assert unguarded.transcribe(clip).text.count("Ask not") > 20
    # "... fellow Americans, ask not ..." (punctuation varies with the number of threads)
    assert normalize(guarded.transcribe(clip).text) == "all americans ask not"


# Windows where tiny.en-f16 loops with one thread per call (the determinism test's retries).
LOOPING_ONE_THREAD = (
    ("jfk_inaugural_1961.flac", 1.5),
    ("ls_test-clean_1089-134686-0000.flac", 1.5),
    ("librivox_shakespeare_sonnet001.mp3", 23.0),
    ("librivox_shakespeare_sonnet001.mp3", 50.0),
    ("ljspeech_LJ001-0001_to_0032_concat.wav", 19.0),
)
PLAIN = (("ljspeech_LJ050-0131.wav", 0.0), ("ls_dev-clean_1272-128104-0000_leopard.wav", 1.0))


def test_guarded_text_is_the_same_in_any_order_and_at_any_concurrency(tiny_en_path, audio_dir, log_messages):
    """One thread per call: forward order, reverse order (on reused states), two calls at once. The
    retries run beam search, which whisper.cpp samples from a generator seeded once per state."""
    clips = [window(audio_dir, name, start) for name, start in LOOPING_ONE_THREAD + PLAIN]
    transcriber = WhisperTranscriber(tiny_en_path, max_concurrent_calls=2, n_threads=1)
    one = functools.partial(transcriber.transcribe, n_threads=1)

    forward = [one(c) for c in clips]
    retries = sum("kept the retry" in m for _, m in log_messages)
    backward = [one(c) for c in reversed(clips)][::-1]
    with ThreadPoolExecutor(max_workers=2) as pool:
        concurrent = list(pool.map(one, clips))
    transcriber.close()

    assert retries == len(LOOPING_ONE_THREAD)  # the beam-search retry is in play, once per looping window
    assert backward == forward
    assert concurrent == forward


def hiss(seconds: float = 5.0) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1e-3, round(seconds * SAMPLE_RATE)).astype(np.float32)


def test_bases_thank_you_on_hiss_is_dropped_as_no_speech(base_path):
    # The full context: with a fitted one base hears nothing here.
    full = DecodingOptions(fit_audio_ctx=False)
    plain = WhisperTranscriber(base_path, n_threads=2, decoding=full, guard=GUARD_OFF)
    dropping = WhisperTranscriber(
        base_path, n_threads=2, decoding=full, guard=dataclasses.replace(GUARD_OFF, drop_no_speech=True)
    )
    try:
        (thanks,) = plain.transcribe(hiss(), language="en").segments
        dropped = dropping.transcribe(hiss(), language="en").segments
    finally:
        plain.close()
        dropping.close()
    assert thanks.text == "Thank you." and thanks.no_speech_prob > 0.6 and thanks.avg_logprob < -1  # the premise
    assert dropped == ()


def tones(seconds: float = 20.0) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.25 * sum(np.sin(2 * np.pi * f * t) for f in (330, 440, 1250)) / 3).astype(np.float32)


@pytest.mark.parametrize(("suppress_nonspeech", "annotation"), [(True, "\ufffd"), (False, "(")])
def test_what_tiny_en_writes_on_tones_is_stripped(tiny_en_path, suppress_nonspeech, annotation):
    decoding = DecodingOptions(suppress_nonspeech=suppress_nonspeech)
    plain = WhisperTranscriber(tiny_en_path, n_threads=2, decoding=decoding, guard=GUARD_OFF)
    stripping = WhisperTranscriber(
        tiny_en_path, n_threads=2, decoding=decoding, guard=dataclasses.replace(GUARD_OFF, strip_nonspeech=True)
    )
    try:
        written = plain.transcribe(tones()).text
        stripped = stripping.transcribe(tones()).segments
    finally:
        plain.close()
        stripping.close()
    # Without suppress_nst the model begins "(" (an annotation) and stops; with it, it writes the first
    # bytes of "♪" only, which decode to U+FFFD.
    assert written == annotation  # the premise
    assert stripped == ()


def test_the_pool_backend_keeps_the_filters_and_leaves_the_retry_off(tiny_en_path, audio_dir, log_messages):
    pool = WhisperTranscriber(tiny_en_path, n_threads=2, backend="pool")
    try:
        assert pool.guard == dataclasses.replace(RULES, retry=False)
        assert pool.transcribe(tones()).segments == ()  # its "♪" is stripped all the same
    finally:
        pool.close()
    assert any(level == "WARNING" and "retry is off on the pool backend" in m for level, m in log_messages)
