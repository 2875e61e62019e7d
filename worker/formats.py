"""Transcript writers: plain text, SubRip (srt), WebVTT (vtt) and JSON.

srt and vtt write a cue per segment, its text on one line, unless SubtitleOptions lay the cues out
for reading (openai-whisper's and WhisperX's writer options): lines wrapped at a width, at most so
many lines per cue (the rest in new cues), a cue per word with that word underlined.
"""

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Format = Literal["txt", "srt", "vtt", "json"]
FORMATS: tuple[Format, ...] = ("txt", "srt", "vtt", "json")


class TimedText(Protocol):
    start: float
    end: float
    text: str


class TimedWord(Protocol):
    """A word of a segment (its `words`, when whisper was asked for them): its text keeps whisper's
    leading space; a piece without one continues the word before it."""

    word: str
    start: float
    end: float


@dataclass(frozen=True)
class SubtitleOptions:
    """How srt and vtt lay out a segment's cues; checked where a job or a request is parsed (worker.messages).

    `max_line_width`: the text wrapped between words into lines of at most this many characters (a
    longer word alone on its line; a speaker label is not counted). `max_line_count`: at most this many
    lines per cue, the rest in new cues, each timed by its words (the first starts with the segment, the
    last ends with it); without word times, by its share of the segment's characters.
    `highlight_words` (needs word times): each cue becomes a cue per word, spanning it, with the cue's
    text and that word underlined (`<u>word</u>`), and the plain cue where no word is said.
    """

    max_line_width: int | None = None
    max_line_count: int | None = None
    highlight_words: bool = False


PLAIN = SubtitleOptions()


@dataclass(frozen=True)
class _Word:
    """A word as a cue shows it (no spaces around it) and when it is said."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class _Cue:
    start: float
    end: float
    text: str  # before any speaker label


Lines = list[list[_Word]]


@dataclass(frozen=True)
class _Screen:
    """Lines shown together, as one cue (or one per word), from `start` to `end`."""

    start: float
    end: float
    lines: Lines


def timestamp(seconds: float, *, decimal_marker: str) -> str:
    """HH:MM:SS<marker>mmm, the form both SRT (',') and WebVTT ('.') require."""
    millis = _millis(seconds)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _speaker(segment: TimedText) -> str | None:
    return getattr(segment, "speaker", None)


def _cues(
    segments: Sequence[TimedText], options: SubtitleOptions, marker: str, label: Callable[[str, str], str]
) -> list[str]:
    cues = []
    for segment in segments:
        speaker = _speaker(segment)
        for cue in _segment_cues(segment, options):
            text = cue.text if speaker is None else label(speaker, cue.text)
            times = f"{timestamp(cue.start, decimal_marker=marker)} --> {timestamp(cue.end, decimal_marker=marker)}"
            cues.append(f"{times}\n{text}\n")
    return cues


def _segment_cues(segment: TimedText, options: SubtitleOptions) -> list[_Cue]:
    """A segment's cues as `options` lay them out (none for a segment without text)."""
    text = segment.text.strip()
    if not text:
        return []
    # A cue must not end before it starts; whisper can emit zero-length segments.
    start, end = segment.start, max(segment.end, segment.start)
    if options == PLAIN:
        return [_Cue(start, end, text)]
    words, timed = _words(segment, text, start, end)
    cues = []
    for screen in _screens(_wrap(words, options.max_line_width), options.max_line_count, start, end):
        cues += _highlighted(screen) if options.highlight_words and timed else [_plain(screen)]
    return cues


def _words(segment: TimedText, text: str, start: float, end: float) -> tuple[list[_Word], bool]:
    """The text's words with their times, and whether those are whisper's word times. Without them (not
    asked for, or words that do not spell the text) each word gets its share of the span by characters."""
    spoken = _spoken(getattr(segment, "words", None) or ())
    if spoken and " ".join(w.text for w in spoken) == " ".join(text.split()):
        return spoken, True
    texts = text.split()
    per_char = (end - start) / len(" ".join(texts))
    words, offset = [], 0
    for word in texts:
        size = len(word) + 1  # a word owns the space after it: the shares leave no gap between cues
        words.append(_Word(word, start + offset * per_char, min(end, start + (offset + size) * per_char)))
        offset += size
    return words, False


def _spoken(pieces: Sequence[TimedWord]) -> list[_Word]:
    """whisper's words as a cue shows them: a piece without a leading space joins the word before it."""
    words: list[_Word] = []
    for piece in pieces:
        text = piece.word.strip()
        if not text:
            continue
        if words and not piece.word[0].isspace():
            words[-1] = _Word(words[-1].text + text, words[-1].start, max(piece.end, words[-1].end))
        else:
            words.append(_Word(text, piece.start, max(piece.end, piece.start)))
    return words


def _wrap(words: list[_Word], width: int | None) -> Lines:
    """Words in lines of at most `width` characters, broken between words (a longer word alone on its line)."""
    lines: Lines = []
    length = 0
    for word in words:
        if lines and (width is None or length + 1 + len(word.text) <= width):
            lines[-1].append(word)
            length += 1 + len(word.text)
        else:
            lines.append([word])
            length = len(word.text)
    return lines


def _screens(lines: Lines, count: int | None, start: float, end: float) -> list[_Screen]:
    """Lines by `count` (all of them without one); between screens the times are the words' own, held
    within the segment and in order."""
    count = count or len(lines)
    groups = [lines[i : i + count] for i in range(0, len(lines), count)]
    screens: list[_Screen] = []
    last = start
    for i, group in enumerate(groups):
        group_start = start if i == 0 else min(max(group[0][0].start, last), end)
        last = end if i == len(groups) - 1 else min(max(group[-1][-1].end, group_start), end)
        screens.append(_Screen(group_start, last, group))
    return screens


def _text(lines: Lines, underline: _Word | None = None) -> str:
    return "\n".join(" ".join(f"<u>{w.text}</u>" if w is underline else w.text for w in line) for line in lines)


def _plain(screen: _Screen) -> _Cue:
    return _Cue(screen.start, screen.end, _text(screen.lines))


def _highlighted(screen: _Screen) -> list[_Cue]:
    """A cue per word, spanning it, with that word underlined; the plain cue where no word is said."""
    plain = _text(screen.lines)
    cues: list[_Cue] = []
    last = screen.start
    for word in (w for line in screen.lines for w in line):
        start = min(max(word.start, last), screen.end)
        end = min(max(word.end, start), screen.end)
        if _millis(start) > _millis(last):
            cues.append(_Cue(last, start, plain))
        cues.append(_Cue(start, end, _text(screen.lines, underline=word)))
        last = end
    if _millis(screen.end) > _millis(last):
        cues.append(_Cue(last, screen.end, plain))
    return cues


def _millis(seconds: float) -> int:
    """A time as a cue shows it (a gap between words that rounds to nothing gets no cue of its own)."""
    return max(0, round(seconds * 1000))


def to_srt(segments: Sequence[TimedText], *, subtitles: SubtitleOptions = PLAIN) -> str:
    """SubRip: numbered cues from 1, comma before milliseconds, a blank line after each cue."""
    cues = _cues(segments, subtitles, ",", lambda speaker, text: f"{speaker}: {text}")
    return "\n".join(f"{n}\n{cue}" for n, cue in enumerate(cues, start=1))


def to_vtt(segments: Sequence[TimedText], *, subtitles: SubtitleOptions = PLAIN) -> str:
    """WebVTT: the WEBVTT header, then cues with a dot before milliseconds; a speaker as a voice tag."""
    return "\n".join(["WEBVTT\n", *_cues(segments, subtitles, ".", lambda speaker, text: f"<v {speaker}>{text}")])


def to_txt(text: str, segments: Sequence[TimedText] = ()) -> str:
    """The text; with speakers, one line per turn: `A: what A said`."""
    if not any(_speaker(s) is not None for s in segments):
        return text.strip() + "\n"
    turns: list[tuple[str | None, list[str]]] = []
    for segment in segments:
        if not segment.text.strip():
            continue
        if turns and turns[-1][0] == _speaker(segment):
            turns[-1][1].append(segment.text.strip())
        else:
            turns.append((_speaker(segment), [segment.text.strip()]))
    return "".join(f"{speaker}: {' '.join(texts)}\n" for speaker, texts in turns)


def to_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def render(
    fmt: Format,
    *,
    text: str,
    segments: Sequence[TimedText],
    document: Mapping[str, Any],
    subtitles: SubtitleOptions = PLAIN,
) -> str:
    """The transcript in `fmt`; `document` is what the JSON format serialises, `subtitles` lay out srt and vtt."""
    if fmt == "txt":
        return to_txt(text, segments)
    if fmt == "srt":
        return to_srt(segments, subtitles=subtitles)
    if fmt == "vtt":
        return to_vtt(segments, subtitles=subtitles)
    if fmt == "json":
        return to_json(document)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
