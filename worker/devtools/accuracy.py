"""Word error rate against reference transcripts, after normalising both sides (pure; jiwer).

Why normalise: the references in ../shared/audio disagree with whisper on form, not on words.
LibriSpeech is upper case without punctuation, LJ Speech spells numbers out ("fourteen
sixty-five", "fifteenth century") where whisper writes digits ("1465", "15th"), and the sonnets
keep old spellings with apostrophes ("tatter'd"). `normalize` maps all of these to one form:
lower case, no punctuation or apostrophes, hyphens as spaces, digits as words.

Numbers are read the way a speaker reads them, and no further: integers as cardinals, except
1100-1999 and 2010-2099, which are read as years in two pairs (1465 -> "fourteen sixty five",
1900 -> "nineteen hundred", 1905 -> "nineteen oh five"); 15th -> "fifteenth"; 2.5 -> "two point
five". Nothing else (currency, percent, times) is rewritten.

`cp_wer` scores a diarized transcript: the concatenated minimum-permutation WER of CHiME-6 (cpWER),
each reference speaker's words against those of the hypothesis speaker paired with them.
"""

import re
from dataclasses import dataclass

import jiwer
import numpy as np
from scipy.optimize import linear_sum_assignment

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_IRREGULAR_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}

_APOSTROPHES = re.compile(r"['’‘`]")
_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"(?<![^\W_])(\d+)(?:\.(\d+)|(st|nd|rd|th))?(?![^\W_])")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def cardinal(n: int) -> str:
    """`n` >= 0 in words, without "and": 1465 -> "one thousand four hundred sixty five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f" {_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{_ONES[n // 100]} hundred" + (f" {cardinal(n % 100)}" if n % 100 else "")
    if n >= 1000 * _SCALES[0][0]:
        return " ".join(_ONES[int(d)] for d in str(n))  # too long to be read as one number
    scale, word = next((s, w) for s, w in _SCALES if n >= s)
    return f"{cardinal(n // scale)} {word}" + (f" {cardinal(n % scale)}" if n % scale else "")


def year(n: int) -> str:
    """A four-digit year read as two pairs: 1465 -> "fourteen sixty five", 1900 -> "nineteen hundred"."""
    century, rest = divmod(n, 100)
    tail = "hundred" if rest == 0 else f"oh {_ONES[rest]}" if rest < 10 else cardinal(rest)
    return f"{cardinal(century)} {tail}"


def ordinal(n: int) -> str:
    """15 -> "fifteenth", 42 -> "forty second", 100 -> "one hundredth"."""
    *head, last = cardinal(n).split()
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def number_words(digits: str, *, decimals: str | None = None, suffix: str | None = None) -> str:
    """How a digit token is read aloud (see the module docstring)."""
    n = int(digits)
    if suffix:
        return ordinal(n)
    if decimals is not None:
        return f"{cardinal(n)} point " + " ".join(_ONES[int(d)] for d in decimals)
    if len(digits) == 4 and (1100 <= n <= 1999 or 2010 <= n <= 2099):
        return year(n)
    return cardinal(n)


def normalize(text: str) -> str:
    """Lower case, digits as words, no apostrophes, punctuation and hyphens as spaces, single spaces."""
    text = _APOSTROPHES.sub("", text.lower())
    text = _THOUSANDS_SEPARATOR.sub("", text)
    text = _NUMBER.sub(lambda m: f" {number_words(m[1], decimals=m[2], suffix=m[3])} ", text)
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate of normalised pairs: total errors / total reference words over all pairs."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no pairs to score")
    return jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses])


def insertions(reference: str, hypothesis_words: list[str]) -> list[bool]:
    """Per word of a normalized hypothesis, whether the alignment behind the WER leaves it without a
    reference word (an insertion: a word nobody said, wherever it sits)."""
    flags = [False] * len(hypothesis_words)
    if not hypothesis_words:
        return flags
    if not normalize(reference):
        return [True] * len(hypothesis_words)
    alignment = jiwer.process_words(normalize(reference), " ".join(hypothesis_words)).alignments[0]
    for chunk in alignment:
        if chunk.type == "insert":
            flags[chunk.hyp_start_idx : chunk.hyp_end_idx] = [True] * (chunk.hyp_end_idx - chunk.hyp_start_idx)
    return flags


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions + deletions + insertions between the normalised texts (either may be empty)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref or not hyp:
        return len(ref.split()) + len(hyp.split())
    measures = jiwer.process_words(ref, hyp)
    return measures.substitutions + measures.deletions + measures.insertions


@dataclass(frozen=True)
class SpeakerWer:
    """cpWER: errors over the reference's words, and which hypothesis speaker each reference one was paired
    with (None: unpaired, all its words deleted); `unpaired`: hypothesis speakers left over (all inserted)."""

    errors: int
    words: int
    pairs: dict[str, str | None]
    unpaired: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.errors / self.words if self.words else float(self.errors > 0)


def cp_wer(references: dict[str, str], hypotheses: dict[str, str]) -> SpeakerWer:
    """Each speaker's text against one hypothesis speaker's, over the pairing with the fewest errors in all.

    Errors add up over pairs, so the best of every permutation is an assignment problem (scipy's
    linear_sum_assignment on the pairwise errors, padded with empty speakers to a square)."""
    refs, hyps = list(references), list(hypotheses)
    size = max(len(refs), len(hyps))
    texts_r = [references[r] for r in refs] + [""] * (size - len(refs))
    texts_h = [hypotheses[h] for h in hyps] + [""] * (size - len(hyps))
    cost = np.array([[word_errors(r, h) for h in texts_h] for r in texts_r], dtype=np.int64).reshape(size, size)
    rows, cols = linear_sum_assignment(cost)
    pairs = {refs[r]: (hyps[c] if c < len(hyps) else None) for r, c in zip(rows, cols, strict=True) if r < len(refs)}
    unpaired = tuple(hyps[c] for r, c in zip(rows, cols, strict=True) if r >= len(refs) and c < len(hyps))
    words = sum(len(normalize(t).split()) for t in references.values())
    return SpeakerWer(int(cost[rows, cols].sum()), words, pairs, unpaired)
