"""Transcript writers: plain text, SubRip (srt), WebVTT (vtt) and JSON."""

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

Format = Literal["txt", "srt", "vtt", "json"]
FORMATS: tuple[Format, ...] = ("txt", "srt", "vtt", "json")


class TimedText(Protocol):
    start: float
    end: float
    text: str


def timestamp(seconds: float, *, decimal_marker: str) -> str:
    """HH:MM:SS<marker>mmm, the form both SRT (',') and WebVTT ('.') require."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _speaker(segment: TimedText) -> str | None:
    return getattr(segment, "speaker", None)


def _cues(segments: Sequence[TimedText], marker: str, label: Callable[[str, str], str]) -> list[str]:
    cues = []
    for segment in segments:
        text = segment.text.strip()
        if not text:
            continue
        if (speaker := _speaker(segment)) is not None:
            text = label(speaker, text)
        # A cue must not end before it starts; whisper can emit zero-length segments.
        end = max(segment.end, segment.start)
        times = f"{timestamp(segment.start, decimal_marker=marker)} --> {timestamp(end, decimal_marker=marker)}"
        cues.append(f"{times}\n{text}\n")
    return cues


def to_srt(segments: Sequence[TimedText]) -> str:
    """SubRip: numbered cues from 1, comma before milliseconds, a blank line after each cue."""
    cues = _cues(segments, ",", lambda speaker, text: f"{speaker}: {text}")
    return "\n".join(f"{n}\n{cue}" for n, cue in enumerate(cues, start=1))


def to_vtt(segments: Sequence[TimedText]) -> str:
    """WebVTT: the WEBVTT header, then cues with a dot before milliseconds; a speaker as a voice tag."""
    return "\n".join(["WEBVTT\n", *_cues(segments, ".", lambda speaker, text: f"<v {speaker}>{text}")])


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


def render(fmt: Format, *, text: str, segments: Sequence[TimedText], document: Mapping[str, Any]) -> str:
    """The transcript in `fmt`; `document` is what the JSON format serialises."""
    if fmt == "txt":
        return to_txt(text, segments)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "json":
        return to_json(document)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
