"""Conversations of real speech and their who-spoke-when references (worker/devtools/conversations.py)."""

import itertools

import numpy as np
import pytest
import soundfile

from worker.devtools import conversations as cv
from worker.devtools.accuracy import normalize

RATE = cv.SAMPLE_RATE


@pytest.fixture(scope="module")
def speakers(audio_dir):
    return cv.load_speakers(audio_dir)


@pytest.fixture(scope="module")
def calls(speakers):
    return cv.calls(speakers)


@pytest.fixture(scope="module")
def talks(speakers):
    return cv.talks(speakers)


def level_db(samples: np.ndarray) -> float:
    return 10 * np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-20)


def span(turn: cv.Turn) -> slice:
    return slice(round(turn.start * RATE), round(turn.end * RATE))


def outside(conversation: cv.Conversation) -> np.ndarray:
    """True where no turn is."""
    free = np.ones(conversation.samples.shape[0], dtype=bool)
    for turn in conversation.turns:
        free[span(turn)] = False
    return free


def others(conversation: cv.Conversation, turn: cv.Turn) -> list[cv.Turn]:
    return [t for t in conversation.turns if t is not turn and t.start < turn.end and turn.start < t.end]


def test_the_same_seed_builds_the_same_conversation_and_another_seed_another(speakers):
    who = [speakers["lj"], speakers["sonnet"], speakers["jfk"]]
    first = cv.mono_conversation("t", who, seconds=60, seed=5)
    again = cv.mono_conversation("t", who, seconds=60, seed=5)
    other = cv.mono_conversation("t", who, seconds=60, seed=6)
    assert first.turns == again.turns and np.array_equal(first.samples, again.samples)
    assert first.turns != other.turns
    call = cv.stereo_call("c", speakers["lj"], speakers["sonnet"], seconds=60, seed=5)
    assert np.array_equal(
        call.samples, cv.stereo_call("c", speakers["lj"], speakers["sonnet"], seconds=60, seed=5).samples
    )


def test_turns_lie_inside_the_recording_and_last_2_to_20_seconds(calls, talks):
    for conversation in calls + talks:
        for turn in conversation.turns:
            assert 0 < turn.start < turn.end <= conversation.seconds - cv.EDGE_SECONDS + 1e-6, conversation.name
            assert cv.TURN_SECONDS[0] <= turn.end - turn.start <= cv.TURN_SECONDS[1], (conversation.name, turn)
            assert normalize(turn.text), (conversation.name, turn)


def test_talks_are_3_to_5_different_people_taking_turns_with_short_gaps(talks):
    assert len(talks) >= 3
    for talk in talks:
        assert talk.channels == 1
        assert 3 <= len(talk.speakers) <= 5 and len(set(talk.speakers)) == len(talk.speakers)
        assert set(talk.speakers) == {t.speaker for t in talk.turns}
        assert 60 <= talk.seconds <= 180, talk.name
        for before, after in itertools.pairwise(talk.turns):
            assert before.speaker != after.speaker
            assert cv.GAP_SECONDS[0] - 1e-3 <= after.start - before.end <= cv.GAP_SECONDS[1] + 1e-3


def test_calls_are_two_people_one_per_channel_sometimes_overlapping(calls):
    overlaps = []
    for call in calls:
        assert call.channels == 2 and len(set(call.speakers)) == 2
        assert all(t.channel == call.speakers.index(t.speaker) for t in call.turns)
        for before, after in itertools.pairwise(call.turns):
            assert before.speaker != after.speaker
            gap = after.start - before.end
            if gap < 0:
                overlaps.append(-gap)
            else:
                assert cv.GAP_SECONDS[0] - 1e-3 <= gap <= cv.GAP_SECONDS[1] + 1e-3
    assert overlaps and max(overlaps) <= cv.OVERLAP_SECONDS[1] + 1e-3


def test_a_talk_is_silent_outside_its_turns_and_its_speaker_is_heard_in_every_turn(talks):
    for talk in talks:
        assert not np.any(talk.samples[outside(talk)])
        for turn in talk.turns:
            audio = talk.samples[span(turn)]
            voiced = cv.frame_levels(audio)
            # Speech all along: levelled to LEVEL_DBFS (pauses inside the turn lower its mean a little).
            assert cv.LEVEL_DBFS - 6 <= level_db(audio) <= cv.LEVEL_DBFS + 3, (talk.name, turn)
            assert np.mean(voiced > cv.LEVEL_DBFS - 30) > 0.6, (talk.name, turn)


def test_each_channel_of_a_call_carries_the_other_speaker_at_the_bleed_level(calls, speakers):
    quieter = cv.stereo_call("c", speakers["ls1089"], speakers["jfk"], seconds=30, seed=1, bleed_db=-30.0)
    for call in [*calls, quieter]:
        assert not np.any(call.samples[outside(call)])
        for turn in call.turns:
            if others(call, turn):
                continue
            audio = call.samples[span(turn)]
            own, other = level_db(audio[:, turn.channel]), level_db(audio[:, 1 - turn.channel])
            assert other - own == pytest.approx(call.bleed_db, abs=0.05), (call.name, turn)


def test_where_two_turns_overlap_both_speakers_are_on_their_own_channels(calls):
    turn, other = next((t, o[0]) for c in calls for t in c.turns if (o := others(c, t)))
    call = next(c for c in calls if turn in c.turns)
    both = slice(round(max(turn.start, other.start) * RATE), round(min(turn.end, other.end) * RATE))
    for t in (turn, other):
        # Each channel: its own speaker, plus the other's bleed; the own speech dominates over the stretch.
        assert level_db(call.samples[both, t.channel]) > cv.LEVEL_DBFS - 15


def test_every_utterance_says_its_transcript_at_a_speaking_rate(speakers):
    """A transcript split off by one clip or line would give a rate far outside what people read at."""
    for speaker in speakers.values():
        for utterance in speaker.utterances:
            rate = len(normalize(utterance.text).split()) / utterance.seconds
            assert 1.0 <= rate <= 4.5, (speaker.name, utterance.text, utterance.seconds)


def test_turn_texts_follow_their_speakers_transcripts(audio_dir, talks, calls):
    sources = {
        "lj": [cv.LJ],
        "sonnet": [cv.SONNET],
        **{name: list(files) for name, files in cv.WHOLE_FILES.items()},
        "ls61": [cv.TWO_SPEAKERS],
    }
    said = {
        name: normalize(" ".join((audio_dir / f).with_suffix(".txt").read_text() for f in files))
        for name, files in sources.items()
    }
    for conversation in talks + calls:
        for turn in conversation.turns:
            assert normalize(turn.text) in said[turn.speaker], (conversation.name, turn)
        assert conversation.text.split() == " ".join(t.text for t in conversation.turns).split()


def test_speakers_are_levelled_and_the_sonnet_reader_is_one_of_them(speakers):
    assert set(speakers) == {"lj", "sonnet", "jfk", "ls1089", "ls1272", "ls61"}
    for speaker in speakers.values():
        audio = np.concatenate([u.samples for u in speaker.utterances])
        levels = cv.frame_levels(audio)
        voiced = levels[levels > cv.speech_threshold(levels)]
        assert 10 * np.log10(np.mean(10 ** (voiced / 10))) == pytest.approx(cv.LEVEL_DBFS, abs=1.5), speaker.name
    assert 40 <= speakers["sonnet"].seconds <= 53 and len(speakers["sonnet"].utterances) >= 10
    assert len(speakers["jfk"].utterances) == 2  # cut at his pause after "ask not"


def test_the_reference_annotation_is_the_turns(calls, talks):
    pytest.importorskip("pyannote.core")
    for conversation in [calls[0], talks[0]]:
        annotation = conversation.annotation()
        assert sorted(annotation.labels()) == sorted(conversation.speakers)
        for segment, _, label in annotation.itertracks(yield_label=True):
            turn = next(t for t in conversation.turns if (t.start, t.end) == (segment.start, segment.end))
            assert turn.speaker == label
        assert conversation.uem().duration() == pytest.approx(conversation.seconds)


def test_faster_whispers_stereo_file_is_referenced_by_each_channels_speech(audio_dir):
    call = cv.reference_call(audio_dir)
    assert call.channels == 2 and call.speakers == ("ls61", "fw-right")
    for turn in call.turns:
        channel = call.samples[:, turn.channel]
        threshold = cv.speech_threshold(cv.frame_levels(channel))
        rest = np.concatenate([channel[: span(turn).start], channel[span(turn).stop :]])
        assert np.mean(cv.frame_levels(channel[span(turn)]) > threshold) > 0.6, turn
        assert np.percentile(cv.frame_levels(rest), 90) < threshold, turn  # its noise floor, not speech
    assert "horizon" in call.texts_by_speaker()["fw-right"].lower()


def test_a_conversation_is_written_as_16_bit_wav(talks, tmp_path):
    path = cv.write(talks[0], tmp_path / "talk.wav")
    samples, rate = soundfile.read(path, dtype="float32")
    assert rate == RATE and samples.shape == talks[0].samples.shape
    assert np.max(np.abs(samples - talks[0].samples)) < 1e-4
    loud = cv.Conversation("loud", talks[0].samples * 4, talks[0].turns, talks[0].speakers)
    with pytest.raises(ValueError, match="clip"):
        cv.write(loud, tmp_path / "loud.wav")
