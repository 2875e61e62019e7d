"""Known speakers measured: 3-voice conversations of real read speech, each voice also given by a clip
of their own that the conversation does not contain (cmd/bench --known-speakers, the gateway's test).

Two sets, the second kept out of every threshold chosen on the first (worker.media.turns.TurnOptions's
known_similarity):
- `first_set`: the voices of ../shared/audio (worker.devtools.conversations): LJ Speech's reader, sonnet 1's,
  LibriSpeech 1089 and JFK;
- `heldout_set`: voices of worker.devtools.heldout's recordings: Allison Smith (Asterisk's prompts), the
  LibriVox reader of pocketsphinx's tests, and MFA's speaker in the session he recorded with a cold (his
  reference from one recording of it, the conversation from the other).
Each case also names a speaker who is not there (their clip from the other set), and leaves one speaker
of the three unnamed: names must go to the right voices, nowhere else, and the unnamed voice gets a letter.

`score` is the share of the reference's speech time labelled with the right name (a named speaker) or
with no name (the unnamed one): worker.pipeline.speakers labels turns, and each step of 0.1 s is compared.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.devtools import heldout
from worker.devtools.conversations import (
    FRAME,
    Conversation,
    Speaker,
    call_voices,
    frame_levels,
    load_speakers,
    mono_conversation,
    speech_threshold,
    utterance,
)
from worker.media.audio import SAMPLE_RATE, decode_audio
from worker.messages import REFERENCE_SECONDS

REFERENCE_TARGET_SECONDS = 6.0
STEP_SECONDS = 0.1


@dataclass(frozen=True)
class Case:
    """A conversation, and the known speakers a request names: name -> reference clip (16 kHz)."""

    conversation: Conversation
    known: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.conversation.name


def held_back(speaker: Speaker) -> tuple[Speaker, np.ndarray]:
    """The speaker without one of their utterances, and that one as a reference clip: the utterance of
    2-10 s nearest REFERENCE_TARGET_SECONDS (cut to 10 s when every one is longer)."""
    low, high = REFERENCE_SECONDS
    fitting = [k for k, u in enumerate(speaker.utterances) if low <= u.seconds]
    pick = min(fitting, key=lambda k: abs(min(speaker.utterances[k].seconds, high) - REFERENCE_TARGET_SECONDS))
    clip = speaker.utterances[pick].samples[: int(high * SAMPLE_RATE)]
    rest = tuple(u for k, u in enumerate(speaker.utterances) if k != pick)
    return Speaker(speaker.name, rest), clip


def case(name: str, voices: list[Speaker], absent: Speaker, *, seconds: float, seed: int) -> Case:
    """`voices` in turns; the first two and `absent` named (with clips of their own), the last one not."""
    kept, known = [], {}
    for k, voice in enumerate(voices):
        rest, clip = held_back(voice)
        kept.append(rest)
        if k < len(voices) - 1:
            known[voice.name] = clip
    known[absent.name] = held_back(absent)[1]
    return Case(mono_conversation(name, kept, seconds=seconds, seed=seed), known)


def first_set(audio_dir: Path) -> list[Case]:
    s = load_speakers(audio_dir)
    return [
        case("known-lj-sonnet-ls1089", [s["lj"], s["sonnet"], s["ls1089"]], s["jfk"], seconds=80.0, seed=21),
        case("known-sonnet-ls1089-lj", [s["sonnet"], s["ls1089"], s["lj"]], s["jfk"], seconds=80.0, seed=22),
        case("known-ls1089-lj-jfk", [s["ls1089"], s["lj"], s["jfk"]], s["sonnet"], seconds=60.0, seed=23),
    ]


def heldout_set(cache: Path, audio_dir: Path) -> list[Case]:
    s = heldout_speakers(cache)
    absent = load_speakers(audio_dir)["lj"]
    return [
        case(
            "known-allison-librivox-michael", [s["allison"], s["librivox"], s["michael"]], absent, seconds=80.0, seed=31
        ),
        case(
            "known-librivox-michael-allison", [s["librivox"], s["michael"], s["allison"]], absent, seconds=80.0, seed=32
        ),
    ]


def heldout_speakers(cache: Path) -> dict[str, Speaker]:
    """The held-out voices, each from one recording session (levelled as the first set's): Allison Smith's
    prompts, pocketsphinx's LibriVox reader, MFA's speaker in the session he recorded with a cold (MFA's
    own tests name it "sickmichael", apart from his healthy "acoustic_corpus" session, which is left out:
    a conversation holds one session of a voice), and the two women of pyannote's sample call."""
    clips = heldout.clips(cache)
    groups = {
        "allison": [c for c in clips if c.name.startswith("asterisk-")],
        "librivox": [c for c in clips if c.name.startswith("librivox-")],
        "michael": [c for c in clips if c.name in ("mfa-cold_corpus", "mfa-cold_corpus3")],
    }
    voices = {
        name: Speaker(name, tuple(utterance(decode_audio(c.path), heldout.spoken(c.reference)) for c in found))
        for name, found in groups.items()
    }
    path, lines = heldout.call(cache)
    said = [(line.speaker, line.start, line.end, heldout.spoken(line.text)) for line in lines]
    return {**voices, **call_voices(decode_audio(path), said)}


def score(case_: Case, turns: list[tuple[float, float, str]]) -> float:
    """Share of the conversation's speech time labelled right: a named speaker's with their name, the
    unnamed one's with a label that is no known name. `turns`: (start s, end s, label)."""
    steps = int(np.ceil(case_.conversation.seconds / STEP_SECONDS))
    said = np.full(steps, "", dtype=object)
    for turn in case_.conversation.turns:
        said[_steps(turn.start, turn.end)] = turn.speaker
    heard = np.full(steps, "", dtype=object)
    for start, end, label in turns:
        heard[_steps(start, end)] = label
    speech = (said != "") & _voiced(case_.conversation.samples, steps)
    names = set(case_.known)
    right = np.array(
        [(s == h) if s in names else (h != "" and h not in names) for s, h in zip(said, heard, strict=True)]
    )
    return float(right[speech].mean()) if speech.any() else 0.0


def _voiced(samples: np.ndarray, steps: int) -> np.ndarray:
    """Steps holding speech (a 10 ms frame over the recording's speech threshold): a spontaneous
    speaker's turn spans their own pauses, which are nobody's speech."""
    levels = frame_levels(samples)
    frames = levels > speech_threshold(levels)
    per_step = round(STEP_SECONDS * SAMPLE_RATE) // FRAME
    padded = np.zeros(steps * per_step, dtype=bool)
    padded[: min(frames.size, padded.size)] = frames[: padded.size]
    return padded.reshape(steps, per_step).any(axis=1)


def _steps(start: float, end: float) -> slice:
    return slice(round(start / STEP_SECONDS), round(end / STEP_SECONDS))
