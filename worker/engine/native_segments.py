"""whisper.cpp's segments (`libwhisper.NativeSegment`, from either backend) read into ours (`Segment`).

Text stripped, token ids and log probabilities kept, and the tokens grouped into words with their times.
"""

from worker.engine import libwhisper
from worker.engine.segments import Segment, TokenLogprob, Word


def to_segment(native: libwhisper.NativeSegment, eot: int, *, words: bool) -> Segment:
    """Our Segment from whisper.cpp's: text stripped, token ids, their mean log probability, words if asked."""
    plogs = [t.plog for t in native.tokens]
    return Segment(
        start=native.start,
        end=native.end,
        text=native.text.strip(),
        tokens=tuple(t.id for t in native.tokens),
        avg_logprob=round(sum(plogs) / len(plogs), 4) if plogs else None,
        no_speech_prob=native.no_speech_prob,
        words=_words(native, eot) if words else None,
        logprobs=tuple(
            TokenLogprob(t.text.decode("utf-8", errors="replace"), tuple(t.text), round(t.plog, 4))
            for t in native.tokens
            if t.id < eot
        ),
    )


def _words(segment: libwhisper.NativeSegment, eot: int) -> tuple[Word, ...]:
    """A segment's text tokens grouped into words: a token that starts with a space starts a word.

    Times come from whisper.cpp's token timestamps (`token_timestamps`: the timestamp-token
    probabilities, snapped to the signal's energy), measured in cmd/bench --words: on LJ Speech the
    median error of a sentence's first-word start and last-word end is a few hundredths of a second.
    DTW over the alignment heads was measured too and is left off (see docs/performance.md).
    """
    words = []
    for tokens in word_tokens(segment, eot):
        start = tokens[0].t0 / 100.0 if tokens[0].t0 >= 0 else segment.start
        end = tokens[-1].t1 / 100.0 if tokens[-1].t1 >= 0 else segment.end
        # Token bytes are joined before decoding: a multi-byte character may span two tokens.
        text = b"".join(t.text for t in tokens).decode("utf-8", errors="replace")
        start = min(max(start, segment.start), segment.end)
        words.append(
            Word(text, start, min(max(end, start), segment.end), round(sum(t.p for t in tokens) / len(tokens), 4))
        )
    return tuple(words)


def word_tokens(segment: libwhisper.NativeSegment, eot: int) -> list[list[libwhisper.NativeToken]]:
    """A segment's text tokens, one list per word: a token that starts with a space starts a word."""
    groups: list[list[libwhisper.NativeToken]] = []
    for token in segment.tokens:
        if token.id >= eot:  # timestamps and other special tokens carry no text
            continue
        if not groups or token.text.startswith(b" "):
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups
