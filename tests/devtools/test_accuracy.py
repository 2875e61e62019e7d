"""Normalisation and WER (worker/devtools/accuracy.py): pure functions, no model."""

import pytest

from worker.devtools.accuracy import cp_wer, normalize, wer, word_errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Years are read in two pairs; other integers as cardinals.
        ("In 1465 Sweynheim", "in fourteen sixty five sweynheim"),
        ("about 1455, has never", "about fourteen fifty five has never"),
        ("in 1900 and 1905", "in nineteen hundred and nineteen oh five"),
        ("2000 or 2024", "two thousand or twenty twenty four"),
        ("42 line Bible", "forty two line bible"),
        ("1,000,000 copies", "one million copies"),
        # Ordinals.
        ("the 15th century", "the fifteenth century"),
        ("1st 2nd 3rd 22nd 101st", "first second third twenty second one hundred first"),
        # Hyphens, apostrophes, case and punctuation.
        ("forty-two line Bible", "forty two line bible"),
        ("a tatter'd weed", "a tatterd weed"),
        ("Mr. Quilter, is the apostle!", "mr quilter is the apostle"),
        ('"lower-case"; etc.', "lower case etc"),
        # Digits glued to letters are not numbers to read.
        ("the 1460s", "the 1460s"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_spelled_out_reference_matches_digit_hypothesis() -> None:
    # Given LJ Speech's spelled-out numbers and whisper's digits
    reference = "In fourteen sixty-five Sweynheim and Pannartz began printing in the fifteenth century."
    hypothesis = "in 1465, Sweynheim and Pannartz began printing in the 15th century"

    # Then they are the same words
    assert wer([reference], [hypothesis]) == 0.0


def test_old_spellings_match_without_apostrophes() -> None:
    assert wer(["Will be a tatter'd weed of small worth held"], ["will be a tatterd weed of small worth held"]) == 0.0


def test_aggregate_is_total_errors_over_total_reference_words() -> None:
    # 0 errors in 2 words, 2 deletions in 4 words: 2/6, not the mean of 0 and 1/2
    assert wer(["one two", "three four five six"], ["one two", "three four"]) == pytest.approx(2 / 6)


def test_empty_hypothesis_is_all_deletions() -> None:
    assert wer(["he could wait no longer"], [""]) == 1.0


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError):
        wer(["a"], ["a", "b"])


def test_word_errors_count_against_an_empty_side_too():
    assert word_errors("a b c", "a x c d") == 2
    assert word_errors("", "one two") == 2 and word_errors("One, two.", "") == 2


def test_cp_wer_pairs_speakers_whatever_their_labels():
    references = {"lj": "printing then for our purpose", "jfk": "ask not what your country can do"}
    swapped = {"A": "ask not what your country can do", "B": "Printing, then, for our purpose."}
    result = cp_wer(references, swapped)
    assert (result.errors, result.words, result.pairs, result.unpaired) == (0, 12, {"lj": "B", "jfk": "A"}, ())


def test_cp_wer_counts_words_given_to_the_wrong_speaker_twice():
    references = {"x": "one two three", "y": "four five six"}
    result = cp_wer(references, {"A": "one two", "B": "three four five six"})  # "three" said by B
    assert result.errors == 2 and result.rate == pytest.approx(2 / 6)


def test_cp_wer_deletes_unpaired_speakers_and_inserts_extra_ones():
    references = {"x": "one two three", "y": "four five six"}
    assert cp_wer(references, {"A": "one two three four five six"}).errors == 6  # y's words: missing from its pair
    extra = cp_wer({"x": "one two three"}, {"A": "one two three", "B": "hello there"})
    assert extra.errors == 2 and extra.unpaired == ("B",)
    assert cp_wer({}, {}).rate == 0.0
