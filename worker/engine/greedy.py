"""Greedy decoding under whisper's rules, for a batch of sequences at once (numpy over [batch, vocab]).

The batched engine (worker.engine.batching) runs one decoder pass for every sequence in flight and
picks each one's next token here. The rules are whisper.cpp 1.8.5's (`whisper_process_logits`, after
openai-whisper's `decoding.py`) for greedy decoding at temperature 0: special tokens never sampled;
no blank or end at the start; sound annotations suppressed (`suppress_nst`); timestamps in pairs,
never backwards, the first at most 1 s in; a timestamp taken whenever all timestamps together are
likelier than the best text token. The likeliest token wins (the first of equals).

What differs from `whisper_full`, on purpose: one pass per window. whisper.cpp keeps a window's tokens
only up to its last timestamp and encodes the rest of the window again from there (a second encoder
pass); here the text after the last timestamp is kept, as a segment ending with the audio.
"""

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.engine.libwhisper.full import NativeSegment, NativeToken

# Timestamp tokens are 20 ms apart; times below are in whisper's 10 ms units.
CENTISECONDS_PER_TIMESTAMP = 2
MAX_INITIAL_TIMESTAMP = 50  # 1.0 s: whisper.cpp's max_initial_ts
END_SLACK = 10  # a timestamp within 100 ms of the audio's end ends the window (whisper.cpp's delta_min)

# whisper.cpp's non_speech_tokens (openai-whisper's list): sound annotations, not words.
NON_SPEECH = (
    '"', "#", "(", ")", "*", "+", "/", ":", ";", "<", "=", ">", "@", "[", "\\", "]", "^",
    "_", "`", "{", "|", "}", "~", "「", "」", "『", "』", "<<", ">>", "<<<", ">>>", "--",
    "---", "-(", "-[", "('", '("', "((", "))", "(((", ")))", "[[", "]]", "{{", "}}", "♪♪",
    "♪♪♪", "♩", "♪", "♫", "♬", "♭", "♮", "♯",
)  # fmt: skip


@dataclass(frozen=True)
class Vocabulary:
    """The token ids the rules need, and every token's bytes (read once per model)."""

    pieces: tuple[bytes, ...]
    eot: int
    sot: int
    beg: int  # <|0.00|>: ids from here up are timestamps
    no_timestamps: int
    no_speech: int
    previous: int
    translate: int
    transcribe: int
    multilingual: bool
    # Never sampled: the special tokens between <|endoftext|> and the timestamps (start, languages,
    # tasks, <|startofprev|>, <|nospeech|>, <|notimestamps|>, ...).
    special: np.ndarray = field(repr=False)
    blank: tuple[int, ...] = ()  # " " and <|endoftext|>: never first
    non_speech: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    @property
    def n_vocab(self) -> int:
        return len(self.pieces)

    def prompt(self, language_token: int | None, task_token: int, *, no_timestamps: bool) -> list[int]:
        """<|startoftranscript|>, then the language and the task (multilingual models), as whisper.cpp."""
        tokens = [self.sot]
        if self.multilingual and language_token is not None:
            tokens += [language_token, task_token]
        if no_timestamps:
            tokens.append(self.no_timestamps)
        return tokens

    def text(self, tokens: Sequence[int]) -> str:
        """The text of `tokens` (special ones left out), their bytes joined before decoding."""
        return b"".join(self.pieces[t] for t in tokens if t < self.eot).decode("utf-8", errors="replace")


def read_vocabulary(lib: ctypes.CDLL, ctx: int) -> Vocabulary:
    """Every token's bytes and the ids of the special ones, from a loaded context."""
    n_vocab = lib.whisper_n_vocab(ctx)
    pieces = tuple(lib.whisper_token_to_str(ctx, i) or b"" for i in range(n_vocab))
    ids = {piece: i for i, piece in enumerate(pieces)}  # a repeated string keeps its last id, as whisper.cpp
    eot, beg = lib.whisper_token_eot(ctx), lib.whisper_token_beg(ctx)
    non_speech = [ids[p] for token in NON_SPEECH for p in (token.encode(), b" " + token.encode()) if p in ids]
    non_speech += [ids[p] for p in (b" -", b" '") if p in ids]  # not at the start of a word
    return Vocabulary(
        pieces=pieces,
        eot=eot,
        sot=lib.whisper_token_sot(ctx),
        beg=beg,
        no_timestamps=lib.whisper_token_not(ctx),
        no_speech=lib.whisper_token_nosp(ctx),
        previous=lib.whisper_token_prev(ctx),
        translate=lib.whisper_token_translate(ctx),
        transcribe=lib.whisper_token_transcribe(ctx),
        multilingual=bool(lib.whisper_is_multilingual(ctx)),
        special=np.arange(eot + 1, beg),
        blank=(eot, *([ids[b" "]] if b" " in ids else [])),
        non_speech=np.array(sorted(set(non_speech)), dtype=np.int64),
    )


@dataclass(frozen=True)
class Choice:
    """A sampled token with its probability (after the rules' masking, as whisper.cpp reports it)."""

    token: int
    p: float
    plog: float


@dataclass(frozen=True)
class Rules:
    """The per-call switches of the rules (whisper.cpp's full params)."""

    suppress_blank: bool = True
    suppress_non_speech: bool = True
    no_timestamps: bool = False


@dataclass
class Decoding:
    """One window's decoding: what was sampled, and where its timestamps are."""

    n_centiseconds: int  # the audio's length in 10 ms units
    max_tokens: int
    rules: Rules = Rules()
    choices: list[Choice] = field(default_factory=list)
    last_timestamp: int | None = None  # the latest timestamp token after <|0.00|>
    no_speech_prob: float | None = None
    done: bool = False

    @property
    def tokens(self) -> list[int]:
        return [c.token for c in self.choices]

    def add(self, choice: Choice, vocab: Vocabulary) -> None:
        """Append a sampled token; done at <|endoftext|>, at a timestamp that reaches the end of the audio,
        or at the token budget (whisper.cpp's: half the text context, less 4)."""
        self.choices.append(choice)
        if choice.token > vocab.beg:
            self.last_timestamp = choice.token
        reached_end = (
            self.last_timestamp is not None
            and CENTISECONDS_PER_TIMESTAMP * (self.last_timestamp - vocab.beg) + END_SLACK >= self.n_centiseconds
        )
        self.done = choice.token == vocab.eot or reached_end or len(self.choices) >= self.max_tokens


def choose(logits: np.ndarray, sequences: Sequence[Decoding], vocab: Vocabulary) -> list[Choice]:
    """Each sequence's next token from its row of `logits` ([batch, vocab], float32; modified in place)."""
    beg, x = vocab.beg, logits
    x[:, vocab.special] = -np.inf
    x[:, vocab.sot] = -np.inf
    for row, sequence in zip(x, sequences, strict=True):
        _sequence_rules(row, sequence.tokens, sequence.last_timestamp, vocab, sequence.rules)
    logprobs = _log_softmax(x)
    with np.errstate(divide="ignore"):
        timestamps = _logsumexp(logprobs[:, beg:])
    force = timestamps > logprobs[:, :beg].max(axis=1)
    logprobs[force, :beg] = -np.inf
    tokens = logprobs.argmax(axis=1)
    plogs = logprobs[np.arange(len(tokens)), tokens]
    return [Choice(int(t), float(np.exp(lp)), float(lp)) for t, lp in zip(tokens, plogs, strict=True)]


def _sequence_rules(
    row: np.ndarray, tokens: list[int], last_timestamp: int | None, vocab: Vocabulary, rules: Rules
) -> None:
    beg = vocab.beg
    if rules.suppress_non_speech:
        row[vocab.non_speech] = -np.inf
    if rules.no_timestamps:
        row[beg:] = -np.inf
    if not tokens:
        if rules.suppress_blank:
            row[list(vocab.blank)] = -np.inf
        row[beg + MAX_INITIAL_TIMESTAMP + 1 :] = -np.inf
    last_was_timestamp = bool(tokens) and tokens[-1] >= beg
    penultimate_was_timestamp = len(tokens) < 2 or tokens[-2] >= beg
    if last_was_timestamp:  # timestamps come in pairs, except right before the end
        if penultimate_was_timestamp:
            row[beg:] = -np.inf
        else:
            row[: vocab.eot] = -np.inf
    if last_timestamp is not None:  # never back in time
        row[beg:last_timestamp] = -np.inf


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    finite = np.where(np.isfinite(top), top, 0.0)
    return finite + np.log(np.exp(x - finite[:, None]).sum(axis=1))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return x - _logsumexp(x)[:, None]


def no_speech_probability(logits: np.ndarray, vocab: Vocabulary) -> float:
    """P(<|nospeech|>) from the first logits of a window, before any rule (openai-whisper's definition)."""
    row = logits.astype(np.float64)
    probabilities = np.exp(row - row.max())
    return round(float(probabilities[vocab.no_speech] / probabilities.sum()), 4)


def segments(sequence: Decoding, vocab: Vocabulary) -> tuple[NativeSegment, ...]:
    """The window's segments, cut at timestamps as whisper.cpp cuts them; text after the last timestamp is
    a segment ending with the audio. Times in seconds from the window's start."""
    choices = [c for c in sequence.choices if c.token != vocab.eot]
    found: list[NativeSegment] = []
    start, first = 0, 0
    i = 0
    while i < len(choices):
        token = choices[i].token
        if token > vocab.beg:
            end = CENTISECONDS_PER_TIMESTAMP * (token - vocab.beg)
            _append(found, choices[first : i + 1], start, end, sequence, vocab)
            start = end
            while i + 1 < len(choices) and choices[i + 1].token > vocab.beg:
                i += 1
                start = CENTISECONDS_PER_TIMESTAMP * (choices[i].token - vocab.beg)
            first = i + 1
        i += 1
    _append(found, choices[first:], start, max(start, sequence.n_centiseconds), sequence, vocab)
    return tuple(found)


def _append(
    found: list[NativeSegment], choices: list[Choice], start: int, end: int, sequence: Decoding, vocab: Vocabulary
) -> None:
    text = vocab.text([c.token for c in choices])
    if not text:
        return
    tokens = tuple(NativeToken(c.token, vocab.pieces[c.token], c.p, c.plog, -1, -1, -1) for c in choices)
    # A timestamp may fall in the silence encoded after the audio (the context's margin): held inside it.
    last = sequence.n_centiseconds
    start, end = min(start, last), min(end, last)
    found.append(NativeSegment(start / 100.0, end / 100.0, text, tokens, sequence.no_speech_prob))
