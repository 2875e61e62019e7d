"""A deterministic guard against whisper's hallucinations: repetition loops and words on non-speech.

whisper.cpp's own guard is the temperature fallback, which this worker leaves off: it samples from a
generator seeded once per whisper_state, so the text would depend on what the state decoded before.
This guard keeps a call's text a function of its audio alone. Pure functions here; the transcriber
applies them to every call (`worker.engine.transcriber`):

1. `assess` measures a decode with openai-whisper's failure signs (its `decode_with_fallback`) plus a
   repetition count that also sees loops too short for zlib. A decode that `needs_retry` is decoded
   again by beam search at temperature 0 (deterministic: no sampling), and `preferred` keeps the
   better of the two by the same measures.
2. `drop_no_speech` removes segments whisper itself calls non-speech (openai-whisper's rule).
3. `strip_nonspeech` removes the annotations whisper writes for sounds: "♪", "[MUSIC]", "(applause)".

The thresholds are openai-whisper's where it has one; docs/performance.md ("The hallucination
guard") has what each rule did to the word error rate, to loops and to words on noise.
"""

import dataclasses
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from worker.engine.segments import Segment, Word


@dataclass(frozen=True)
class GuardOptions:
    """Which rules run, and their thresholds.

    `retry`: decode a failed call again with beam search of `retry_beam_size`; `drop_no_speech`:
    drop segments with no_speech_prob > `no_speech_threshold` and avg_logprob < `logprob_threshold`;
    `strip_nonspeech`: remove sound annotations from the text.
    """

    retry: bool = True
    drop_no_speech: bool = True
    strip_nonspeech: bool = True
    retry_beam_size: int = 5
    # openai-whisper's: its text compresses this well only when it repeats itself.
    compression_ratio_threshold: float = 2.4
    # A decode fails when one n-gram of up to `repetition_max_ngram` tokens follows itself so often that its
    # extra copies hold at least `repetition_min_tokens` tokens and `repetition_share` of the decode's text
    # tokens (see `repeated_tokens`).
    repetition_max_ngram: int = 16
    repetition_min_tokens: int = 8
    repetition_share: float = 0.3
    # openai-whisper's, for the mean over a call's tokens (one 30 s window for it, one call for us).
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6

    @property
    def enabled(self) -> bool:
        return self.retry or self.drop_no_speech or self.strip_nonspeech


GUARD_ON = GuardOptions()
GUARD_OFF = GuardOptions(retry=False, drop_no_speech=False, strip_nonspeech=False)


@dataclass(frozen=True)
class DecodeCheck:
    """What `assess` measured of one decode (all of a call's segments together).

    `repeated_tokens`: tokens in the extra copies of its most repeated n-gram; `text_tokens`: its text
    tokens; `avg_logprob` and `no_speech_prob`: None when nothing was decoded (or not computed).
    """

    compression_ratio: float
    repeated_tokens: int
    text_tokens: int
    avg_logprob: float | None
    no_speech_prob: float | None

    def summary(self) -> str:
        """For a log line."""
        logprob = "-" if self.avg_logprob is None else f"{self.avg_logprob:.2f}"
        return (
            f"compression ratio {self.compression_ratio:.2f}, {self.repeated_tokens} of {self.text_tokens} "
            f"text tokens repeated, avg logprob {logprob}"
        )

    def loops(self, options: GuardOptions) -> bool:
        """The text repeats itself: a loop, or a phrase said again that was said once."""
        repeats = self.repeated_tokens >= max(
            options.repetition_min_tokens, options.repetition_share * self.text_tokens
        )
        return repeats or self.compression_ratio > options.compression_ratio_threshold

    def improbable(self, options: GuardOptions) -> bool:
        return self.avg_logprob is not None and self.avg_logprob < options.logprob_threshold

    def silent(self, options: GuardOptions) -> bool:
        """openai-whisper's "silence": likely no speech, and nothing decoded with confidence."""
        return (
            self.no_speech_prob is not None
            and self.no_speech_prob > options.no_speech_threshold
            and (self.avg_logprob is None or self.avg_logprob < options.logprob_threshold)
        )


def compression_ratio(text: str) -> float:
    """Bytes of `text` over bytes of its zlib compression (openai-whisper's `compression_ratio`); 0 for ''."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeated_tokens(tokens: Sequence[int], max_ngram: int) -> int:
    """Tokens in the extra copies of the n-gram (n <= `max_ngram`) that most follows itself back to back.

    "Ask not. Ask not. Ask not." is 3 copies of a 3-token n-gram: 6. This counts what zlib misses on a
    short decode (a few hundred bytes compress poorly whatever they hold): whisper's loops repeat one
    n-gram back to back, while speech rarely says a phrase twice in a row, and then not to the end.
    """
    best = 0
    for period in range(1, max_ngram + 1):
        run = 0  # tokens so far equal to the one `period` before them
        for i in range(period, len(tokens)):
            run = run + 1 if tokens[i] == tokens[i - period] else 0
            if run >= period:  # at least one whole extra copy
                best = max(best, run - run % period)
    return best


def mean_logprob(segments: Sequence[Segment]) -> float | None:
    """The mean log probability of every token of `segments` (each segment's mean, weighted by its tokens)."""
    scored = [(s.avg_logprob, len(s.tokens)) for s in segments if s.avg_logprob is not None and s.tokens]
    total = sum(n for _, n in scored)
    return sum(p * n for p, n in scored) / total if total else None


def assess(segments: Sequence[Segment], eot: int, options: GuardOptions) -> DecodeCheck:
    """Measure one call's decode; `eot`: the model's end-of-text id (ids from it up carry no text)."""
    text_tokens = [t for s in segments for t in s.tokens if t < eot]
    return DecodeCheck(
        compression_ratio=round(compression_ratio(" ".join(s.text for s in segments)), 3),
        repeated_tokens=repeated_tokens(text_tokens, options.repetition_max_ngram),
        text_tokens=len(text_tokens),
        avg_logprob=mean_logprob(segments),
        no_speech_prob=next((s.no_speech_prob for s in segments if s.no_speech_prob is not None), None),
    )


def needs_retry(check: DecodeCheck, options: GuardOptions) -> bool:
    """A decode to do again: it loops or is improbable, unless it is silence (dropped, not decoded again:
    openai-whisper skips the fallback there too)."""
    failed = check.loops(options) or check.improbable(options)
    return options.retry and failed and not check.silent(options)


def preferred(first: DecodeCheck, retry: DecodeCheck, options: GuardOptions) -> bool:
    """True when the retry's decode is to be kept: it fails fewer of the rules (looping first, then being
    improbable) than the first decode; failing the same ones, it repeats fewer tokens (when both loop) or
    is at least as likely (beam search wins a tie: it is the stronger search)."""

    def rank(check: DecodeCheck) -> tuple[bool, bool, int, float]:
        loops = check.loops(options)
        likelihood = check.avg_logprob if check.avg_logprob is not None else float("-inf")
        return loops, check.improbable(options), check.repeated_tokens if loops else 0, -likelihood

    return rank(retry) <= rank(first)


def drop_no_speech(segments: Sequence[Segment], options: GuardOptions) -> tuple[Segment, ...]:
    """`segments` without those whisper calls non-speech: no_speech_prob over the threshold and a low
    avg_logprob (openai-whisper's rule; it applies it to a 30 s window, this to each segment, whose
    no_speech_prob is its call's)."""

    def silent(s: Segment) -> bool:
        return (
            s.no_speech_prob is not None
            and s.avg_logprob is not None
            and s.no_speech_prob > options.no_speech_threshold
            and s.avg_logprob < options.logprob_threshold
        )

    return tuple(s for s in segments if not silent(s))


# What whisper writes for sounds, from the subtitles it learnt on: music signs, and a description in
# square brackets, parentheses or asterisks ("[MUSIC]", "[BLANK_AUDIO]", "(upbeat music)", "*laughs*").
# Speech is never written that way by whisper, so any such span goes, whatever it says: a list of sound
# words would miss "(crowd murmuring)". Asterisks need letters only between them, so that "2*3*4" stays.
# Seen on tones and clicks: a bracket opened and never closed (the decode ended there: "(") and U+FFFD,
# the bytes of a music sign cut short (its first tokens, when suppress_nst forbids the rest).
NONSPEECH_SIGNS = "♪♫♬♩♭♮♯\ufffd"
_ANNOTATION = re.compile(rf"\[[^\[\]]*(?:\]|$)|\([^()]*(?:\)|$)|\*[A-Za-z_ '-]+\*|[{NONSPEECH_SIGNS}]+")


def strip_nonspeech(text: str) -> str:
    """`text` without sound annotations, spaces tidied (two spaces left by a removal become one)."""
    return " ".join(_ANNOTATION.sub(" ", text).split())


def strip_segment(segment: Segment) -> Segment | None:
    """`segment` with its sound annotations stripped (its words too), None when nothing else is left.

    Its tokens stay as decoded: they are what whisper produced, the text is what it heard.
    """
    text = strip_nonspeech(segment.text)
    if text == segment.text:
        return segment
    if not text:
        return None
    words = None if segment.words is None else _spoken_words(segment.words)
    return dataclasses.replace(segment, text=text, words=words)


def _spoken_words(words: Sequence[Word]) -> tuple[Word, ...]:
    """The words left when the annotations are cut from their joined text; a word cut in part keeps its rest."""
    joined = "".join(w.word for w in words)
    removed = [m.span() for m in _ANNOTATION.finditer(joined)]
    kept, offset = [], 0
    for w in words:
        start, end = offset, offset + len(w.word)
        offset = end
        chars = [c for i, c in enumerate(w.word, start) if not any(a <= i < b for a, b in removed)]
        rest = "".join(chars).rstrip()
        if rest.strip():
            kept.append(dataclasses.replace(w, word=rest if rest.startswith(" ") else " " + rest.lstrip()))
    return tuple(kept)


def filter_segments(segments: Sequence[Segment], options: GuardOptions) -> tuple[Segment, ...]:
    """The segments that are speech: no-speech ones dropped, annotations stripped (as `options` says)."""
    kept = drop_no_speech(segments, options) if options.drop_no_speech else tuple(segments)
    if options.strip_nonspeech:
        kept = tuple(s for s in map(strip_segment, kept) if s is not None)
    return kept
