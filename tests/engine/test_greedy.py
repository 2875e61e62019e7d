"""whisper's decoding rules in numpy (worker.engine.greedy), on hand-made logits, and the log-mel against libwhisper's."""

import numpy as np
import pytest

from worker.engine import libwhisper
from worker.engine.greedy import Choice, Decoding, Rules, Vocabulary, choose, no_speech_probability, segments
from worker.engine.libwhisper.group import NativeGroup
from worker.engine.libwhisper.loader import open_library
from worker.engine.mel import log_mel

# A toy vocabulary laid out like whisper's: text 0-9, <|endoftext|> 10, specials 11-15, timestamps 16-.
EOT, SOT, NOT, NOSP, PREV, BEG = 10, 11, 12, 13, 14, 16
VOCAB = Vocabulary(
    pieces=(b" a", b" b", b"c", b" ", b" (", b"d", b"e", b"f", b"g", b"h", b"", b"", b"", b"", b"", b"") + (b"",) * 400,
    eot=EOT,
    sot=SOT,
    beg=BEG,
    no_timestamps=NOT,
    no_speech=NOSP,
    previous=PREV,
    translate=15,
    transcribe=15,
    multilingual=False,
    special=np.arange(EOT + 1, BEG),
    blank=(EOT, 3),
    non_speech=np.array([4]),
)


def _logits(**scores: float) -> np.ndarray:
    """A row of -10 with some tokens raised: t0 ... t9, eot, ts0 ... (timestamps)."""
    row = np.full((1, VOCAB.n_vocab), -10.0, dtype=np.float32)
    for name, value in scores.items():
        index = EOT if name == "eot" else BEG + int(name[2:]) if name.startswith("ts") else int(name[1:])
        row[0, index] = value
    return row


def _pick(row: np.ndarray, tokens: tuple[int, ...] = (), rules: Rules | None = None, seconds: float = 10.0) -> int:
    decoding = Decoding(n_centiseconds=int(seconds * 100), max_tokens=220, rules=rules or Rules())
    for token in tokens:
        decoding.add(Choice(token, 1.0, 0.0), VOCAB)
    return choose(row, [decoding], VOCAB)[0].token


def test_the_likeliest_text_token_wins_and_specials_never_do():
    assert _pick(_logits(t5=3.0, t6=2.0), [BEG]) == 5
    assert _pick(_logits(t5=3.0, **{"t1": 3.0}), [BEG]) == 1  # the first of equals
    row = _logits(t5=3.0)
    row[0, SOT] = row[0, NOSP] = 9.0
    assert _pick(row, [BEG]) == 5


def test_no_blank_or_end_first_and_no_annotations():
    assert _pick(_logits(t3=5.0, eot=4.9, t7=4.0)) == 7  # " " and <|endoftext|> cannot start
    assert _pick(_logits(t4=5.0, t7=4.0), [BEG]) == 7  # " (" is a sound annotation
    assert _pick(_logits(t4=5.0, t7=4.0), [BEG], Rules(suppress_non_speech=False)) == 4


def test_timestamps_come_in_pairs_and_never_go_back():
    # After a text token and a timestamp, another timestamp (or the end) must follow...
    assert _pick(_logits(t5=5.0, ts40=1.0), [BEG, 5, BEG + 30]) == BEG + 40
    # ...after two timestamps, text must.
    assert _pick(_logits(ts40=5.0, t5=1.0), [BEG, 5, BEG + 30, BEG + 30]) == 5
    # never earlier than the last one
    assert _pick(_logits(ts20=5.0, ts35=4.0, t2=-5.0), [BEG, 5, BEG + 30]) == BEG + 35


def test_all_timestamps_together_beat_a_likelier_text_token():
    row = _logits(t5=2.0, ts10=1.5, ts11=1.5, ts12=1.5)
    assert _pick(row, [BEG, 5]) >= BEG  # e^1.5 * 3 > e^2
    assert _pick(_logits(t5=2.0, ts10=1.5), [BEG, 5]) == 5


def test_the_first_timestamp_is_at_most_one_second_in():
    assert _pick(_logits(ts70=5.0, ts50=4.0)) == BEG + 50
    assert _pick(_logits(ts70=5.0, ts50=4.0), [BEG]) != BEG + 50  # only the first


def test_no_timestamps_rule():
    assert _pick(_logits(ts0=5.0, t5=1.0), [], Rules(no_timestamps=True)) == 5


def test_a_window_ends_at_eot_at_the_end_of_its_audio_or_at_its_budget():
    decoding = Decoding(n_centiseconds=500, max_tokens=5)
    decoding.add(Choice(BEG, 1, 0), VOCAB)
    decoding.add(Choice(5, 1, 0), VOCAB)
    assert not decoding.done
    decoding.add(Choice(BEG + 245, 1, 0), VOCAB)  # 4.90 s: within 100 ms of the end
    assert decoding.done
    short = Decoding(n_centiseconds=500, max_tokens=2)
    short.add(Choice(5, 1, 0), VOCAB)
    short.add(Choice(6, 1, 0), VOCAB)
    assert short.done


def test_segments_are_cut_at_timestamps_and_the_tail_ends_with_the_audio():
    decoding = Decoding(n_centiseconds=800, max_tokens=100, no_speech_prob=0.1)
    for token in (BEG, 0, 2, BEG + 100, BEG + 100, 1, BEG + 200, BEG + 210, 5, EOT):
        decoding.add(Choice(token, 0.5, -0.7), VOCAB)
    found = segments(decoding, VOCAB)
    assert [(s.start, s.end, s.text) for s in found] == [(0.0, 2.0, " ac"), (2.0, 4.0, " b"), (4.2, 8.0, "d")]
    assert [t.id for t in found[0].tokens] == [BEG, 0, 2, BEG + 100]
    assert all(s.no_speech_prob == 0.1 for s in found)


def test_no_speech_probability_is_read_before_any_rule():
    row = np.zeros(VOCAB.n_vocab, dtype=np.float32)
    row[NOSP] = np.log(VOCAB.n_vocab - 1.0)  # as likely as all the others together
    assert no_speech_probability(row, VOCAB) == pytest.approx(0.5, abs=1e-4)


def test_numpy_log_mel_encodes_like_whisper_cpps_own(tiny_en_path, jfk):
    """The same audio through whisper.cpp's mel and through ours, then the same encoder and first decoder
    pass: the logits agree to a few hundredths and pick the same tokens."""
    context = libwhisper.NativeContext(open_library(), tiny_en_path, flash_attn=True)
    group = NativeGroup(context, 2)
    states = [context.new_state() for _ in range(2)]
    handles = [s.acquire() for s in states]
    try:
        audio = np.ascontiguousarray(jfk, dtype=np.float32)
        lib = context.lib
        assert (
            lib.whisper_pcm_to_mel_with_state(
                context.handle, handles[0], libwhisper.full._float_ptr(audio), audio.size, 1
            )
            == 0
        )
        n_ctx = audio.size // 320 + 1
        group.set_mel(handles[1], log_mel(audio, 2 * n_ctx))
        group.encode(handles, [n_ctx, n_ctx], 1)
        sot = lib.whisper_token_sot(context.handle)
        logits = group.decode(handles, [[sot], [sot]], [0, 0], 1)
    finally:
        group.close()
        for state in states:
            state.release()
            state.close()
        context.close()
    assert np.abs(logits[0] - logits[1]).max() < 0.05
    assert np.argsort(logits[0])[-5:].tolist() == np.argsort(logits[1])[-5:].tolist()
