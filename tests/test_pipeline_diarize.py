"""Who spoke when, on real speech: one speaker per channel (calls, with bleed), and the typed refusals."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import MODELS_DIR, normalize

from worker.engine.catalog import VAD_MODEL
from worker.engine.models import ModelDownloader
from worker.engine.speech import SpeechDetector
from worker.errors import SingleChannel
from worker.formats import render
from worker.media.audio import SAMPLE_RATE, decode_audio
from worker.pipeline import Diarization, PipelineOptions, Processor

CHANNELS = Diarization("channels")
LEFT, RIGHT = "jfk_inaugural_1961.flac", "ls_test-clean_1089-134686-0000.flac"
BLEED_DB = -20.0


@pytest.fixture(scope="module")
def processor(transcriber) -> Processor:
    detector = SpeechDetector(ModelDownloader(MODELS_DIR, download_url="").ensure_model_exists(VAD_MODEL.name))
    return Processor(transcriber, model_name="tiny.en", options=PipelineOptions(chunker="vad"), speech=detector)


def call(audio_dir: Path, path: Path, *, overlap_seconds: float = 0.0) -> tuple[float, float]:
    """A two-person call as a stereo file: LEFT speaks, then RIGHT (starting `overlap_seconds` before LEFT
    ends), each faintly heard on the other's channel (BLEED_DB). Returns where RIGHT starts and ends."""
    left, right = decode_audio(audio_dir / LEFT), decode_audio(audio_dir / RIGHT)
    offset = left.size - int(overlap_seconds * SAMPLE_RATE) if overlap_seconds else left.size + SAMPLE_RATE
    n = max(left.size, offset + right.size) + SAMPLE_RATE
    a, b = np.zeros(n, np.float32), np.zeros(n, np.float32)
    a[: left.size] = left
    b[offset : offset + right.size] = right
    bleed = 10 ** (BLEED_DB / 20)
    soundfile.write(path, np.stack([a + bleed * b, b + bleed * a], axis=1), SAMPLE_RATE, subtype="PCM_16")
    return offset / SAMPLE_RATE, (offset + right.size) / SAMPLE_RATE


def test_each_channel_is_its_speaker_and_bleed_is_not_transcribed_twice(processor, transcriber, audio_dir, tmp_path):
    right_start, _ = call(audio_dir, tmp_path / "call.wav")
    result = processor.process_file(tmp_path / "call.wav", diarization=CHANNELS, word_timestamps=True)

    said_a = " ".join(s.text for s in result.segments if s.speaker == "A")
    said_b = " ".join(s.text for s in result.segments if s.speaker == "B")
    assert {s.speaker for s in result.segments} == {"A", "B"}
    assert normalize(said_a) == normalize(transcriber.transcribe(decode_audio(audio_dir / LEFT)).text)
    assert normalize(said_b) == normalize(transcriber.transcribe(decode_audio(audio_dir / RIGHT)).text)
    # The bleed of each speaker into the other's channel added no words: the text is the two clips'.
    assert len(normalize(result.text).split()) == len(normalize(said_a).split()) + len(normalize(said_b).split())
    assert all(s.end <= right_start + 0.5 for s in result.segments if s.speaker == "A")
    assert all(s.start >= right_start - 0.5 for s in result.segments if s.speaker == "B")
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    assert all(w.speaker == s.speaker for s in result.segments for w in s.words)


def test_speakers_show_in_every_format(processor, audio_dir, tmp_path):
    call(audio_dir, tmp_path / "call.wav")
    result = processor.process_file(tmp_path / "call.wav", diarization=CHANNELS)
    vtt = render("vtt", text=result.text, segments=result.segments, document={})
    srt = render("srt", text=result.text, segments=result.segments, document={})
    txt = render("txt", text=result.text, segments=result.segments, document={})
    assert "<v A>And so my fellow Americans" in vtt and "<v B>He hoped" in vtt
    assert "\nA: And so my fellow Americans" in srt and "\nB: He hoped" in srt
    assert txt.splitlines()[0].startswith("A: And so my fellow") and txt.splitlines()[1].startswith("B: He hoped")
    assert len(txt.splitlines()) == 2  # a line per turn


def test_overlapping_speech_on_two_channels_keeps_both_speakers_words(processor, transcriber, audio_dir, tmp_path):
    call(audio_dir, tmp_path / "overlap.wav", overlap_seconds=3.0)
    result = processor.process_file(tmp_path / "overlap.wav", diarization=CHANNELS)
    said_b = normalize(" ".join(s.text for s in result.segments if s.speaker == "B"))
    alone_b = normalize(transcriber.transcribe(decode_audio(audio_dir / RIGHT)).text)
    assert said_b.split()[:4] == alone_b.split()[:4]  # B's first words, said while A still talks
    assert "your country" in normalize(" ".join(s.text for s in result.segments if s.speaker == "A"))


def test_the_stereo_test_file_of_faster_whisper(processor, audio_dir):
    result = processor.process_file(audio_dir / "fw_stereo_diarization.wav", diarization=CHANNELS)
    by_speaker = {s.speaker: normalize(s.text) for s in result.segments}
    assert "confused complaint against the wizard" in by_speaker["A"]
    assert "horizon seems extremely distant" in by_speaker["B"]


def test_channels_on_a_mono_file_or_on_identical_channels_is_a_typed_error(processor, audio_dir):
    with pytest.raises(SingleChannel, match="this recording has 1"):
        processor.process_file(audio_dir / RIGHT, diarization=CHANNELS)
    with pytest.raises(SingleChannel, match="same sound"):  # JFK's flac: one sound stored as stereo
        processor.process_file(audio_dir / LEFT, diarization=CHANNELS)


# Three voices: JFK, a LibriSpeech reader (1089) and LJ Speech's reader, taking turns with short pauses.
TALK = (("jfk_inaugural_1961.flac", "jfk"), ("ls_test-clean_1089-134686-0000.flac", "1089"),
        ("ljspeech_LJ050-0131.wav", "lj"), ("ls_test-clean_1089-134691-0001.flac", "1089"),
        ("ljspeech_LJ001-0009.flac", "lj"), ("ls_test-clean_1089-134686-0001.flac", "1089"))  # fmt: skip


@pytest.fixture(scope="module")
def talk(audio_dir) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """A mono conversation and who speaks when in it (start, end, speaker)."""
    parts, truth, at = [], [], 0.0
    for name, speaker in TALK:
        clip = decode_audio(audio_dir / name)
        parts += [clip, np.zeros(SAMPLE_RATE // 2, np.float32)]
        truth.append((at, at + clip.size / SAMPLE_RATE, speaker))
        at += clip.size / SAMPLE_RATE + 0.5
    return np.concatenate(parts), truth


def voice_processor(transcriber, speech_processor) -> Processor:
    from worker.engine.catalog import VOICE_MODEL
    from worker.engine.voices import SpeakerEncoder

    encoder = SpeakerEncoder(ModelDownloader(MODELS_DIR, download_url="").ensure_model_exists(VOICE_MODEL.name))
    return Processor(
        transcriber,
        model_name="tiny.en",
        options=PipelineOptions(chunker="vad"),
        speech=speech_processor.speech,
        voices=lambda: encoder,
    )


def speaker_of_clip(result, start: float, end: float) -> str:
    """The label most of a clip's words carry."""
    labels = [w.speaker for s in result.segments for w in s.words if start <= (w.start + w.end) / 2 <= end]
    return max(set(labels), key=labels.count)


@pytest.mark.parametrize("count", [None, 3])
def test_voices_are_told_apart_in_one_channel(transcriber, processor, talk, count):
    samples, truth = talk
    plain = processor.process_samples(samples)
    result = voice_processor(transcriber, processor).process_samples(
        samples, word_timestamps=True, diarization=Diarization("speakers", num_speakers=count, words=True)
    )
    labels = [speaker_of_clip(result, start, end) for start, end, _ in truth]
    by_voice = {}
    for label, (_, _, voice) in zip(labels, truth, strict=True):
        by_voice.setdefault(voice, set()).add(label)
    assert all(len(found) == 1 for found in by_voice.values()), by_voice  # one label per voice...
    assert len({next(iter(found)) for found in by_voice.values()}) == 3, by_voice  # ...a different one each
    assert labels[0] == "A" and labels[1] == "B" and labels[2] == "C"  # in order of first appearance
    assert normalize(result.text) == normalize(plain.text)  # diarizing changes no word
    assert all(len({w.speaker for w in s.words}) == 1 and s.speaker == s.words[0].speaker for s in result.segments)


def test_without_word_timestamps_asked_the_diarized_segments_carry_no_words(transcriber, processor, talk):
    samples, _ = talk
    result = voice_processor(transcriber, processor).process_samples(
        samples, word_timestamps=True, diarization=Diarization("speakers", words=False)
    )
    assert result.segments and all(s.words is None and s.speaker for s in result.segments)


def test_known_speakers_are_named_and_the_others_lettered(transcriber, processor, audio_dir):
    """Two of three voices named by clips the conversation does not contain, a third clip of somebody
    absent: >= 90% of the speech time carries the right label (worker/devtools/known_speakers.py)."""
    from worker.devtools import known_speakers
    from worker.pipeline import known_voice

    case = known_speakers.first_set(audio_dir)[0]
    known = tuple(known_voice(name, clip) for name, clip in case.known.items())
    result = voice_processor(transcriber, processor).process_samples(
        case.conversation.samples, diarization=Diarization("speakers", words=False, known=known)
    )
    labels = {s.speaker for s in result.segments}
    present, absent = case.conversation.speakers, set(case.known) - set(case.conversation.speakers)
    assert labels == {*(set(case.known) & set(present)), "A"}, labels  # the unnamed voice is A
    assert not labels & absent
    assert known_speakers.score(case, [(s.start, s.end, s.speaker) for s in result.segments]) >= 0.9


@pytest.mark.parametrize(("seconds", "gain", "why"), [(1.5, 1.0, "1.5 s"), (11.0, 1.0, "11.0 s"), (3.0, 0.0, "silent")])
def test_a_reference_clip_that_cannot_name_anyone_is_a_typed_error(audio_dir, seconds, gain, why):
    from worker.errors import InvalidReference
    from worker.pipeline import known_voice

    speech = np.tile(decode_audio(audio_dir / LEFT), 2)[: int(seconds * SAMPLE_RATE)] * gain
    with pytest.raises(InvalidReference, match=why):
        known_voice("Ann", speech)


def test_a_channels_segment_with_words_is_cut_at_its_speakers_pauses():
    from worker.engine.segments import Segment, Word
    from worker.pipeline.speakers import split_at_pauses

    words = (Word(" Yes,", 1.0, 1.4, 0.9), Word(" right.", 1.5, 1.9, 0.9), Word(" And", 4.0, 4.2, 0.9),
             Word(" then?", 4.3, 4.8, 0.9))  # fmt: skip
    segment = Segment(0.8, 5.0, "Yes, right. And then?", tokens=(1, 2, 3), words=words)
    first, second = split_at_pauses(segment, 1.0)
    assert (first.start, first.end, first.text, second.start, second.end, second.text) == (
        1.0, 1.9, "Yes, right.", 4.0, 4.8, "And then?"
    )  # fmt: skip
    assert split_at_pauses(segment, 2.5) == [segment]  # no pause that long: the segment as it was
    assert split_at_pauses(dataclasses.replace(segment, words=None), 1.0) == [dataclasses.replace(segment, words=None)]
