"""What a whisper call returns: segments of text with their tokens, probabilities and words.

Plain frozen data, shared by the transcriber (which makes it), the hallucination guard (which
filters it) and the pipeline (which moves it to absolute time).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprob:
    """A text token whisper decoded: its text, its bytes (a multi-byte character may be split between
    tokens: `token` then has a replacement character where `bytes` has the piece), its log probability."""

    token: str
    bytes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True)
class Word:
    """One word of a segment (with its leading space and punctuation, as OpenAI's), times in seconds.

    `probability`: the mean probability of its tokens.
    """

    word: str
    start: float
    end: float
    probability: float
    speaker: str | None = None  # set by diarization (worker.pipeline), never by whisper


@dataclass(frozen=True)
class Segment:
    """A piece of transcript; times in seconds from the start of the audio passed in.

    `tokens`: the ids whisper decoded for it (text and timestamp tokens); `avg_logprob`: their mean log
    probability (whisper.cpp's per-token values; OpenAI averages per 30 s window); `no_speech_prob`:
    the probability that the call's audio holds no speech, as openai-whisper computes it (None from
    the pywhispercpp fallback); `words`: only when asked for (None otherwise).
    """

    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: tuple[Word, ...] | None = None
    speaker: str | None = None  # set by diarization (worker.pipeline), never by whisper
    # The text tokens' log probabilities (None from the pywhispercpp fallback, or after a cut at a turn).
    logprobs: tuple[TokenLogprob, ...] | None = None

    def shifted(self, seconds: float, *, clamp: tuple[float, float] | None = None) -> "Segment":
        """This segment `seconds` later (words too); with `clamp=(lo, hi)`, every time first held inside it."""

        def move(t: float) -> float:
            if clamp is not None:
                t = min(max(t, clamp[0]), clamp[1])
            return round(t + seconds, 3)

        words = None
        if self.words is not None:
            words = tuple(
                dataclasses.replace(w, start=move(w.start), end=move(max(w.end, w.start))) for w in self.words
            )
        return dataclasses.replace(self, start=move(self.start), end=move(max(self.end, self.start)), words=words)

    def placed(self, place: Callable[[float, float, bool], tuple[float, float]]) -> "Segment":
        """This segment with its span and its words' spans replaced by `place(start, end, is_word)`
        (rounded to the millisecond): times in a chunk's audio put back onto the recording."""

        def span(start: float, end: float, word: bool) -> tuple[float, float]:
            placed_start, placed_end = place(start, max(end, start), word)
            return round(placed_start, 3), round(max(placed_end, placed_start), 3)

        words = None
        if self.words is not None:
            words = tuple(
                dataclasses.replace(w, start=s, end=e) for w in self.words for s, e in [span(w.start, w.end, True)]
            )
        start, end = span(self.start, self.end, False)
        return dataclasses.replace(self, start=start, end=end, words=words)


@dataclass(frozen=True)
class Transcription:
    """What one call returns. `language_probability` is None when the language was not detected."""

    segments: tuple[Segment, ...]
    language: str
    language_probability: float | None = None

    @property
    def text(self) -> str:
        # whisper.cpp segment texts carry no reliable separator between them: join with a space.
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())
