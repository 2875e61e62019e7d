"""Subtitle and text writers."""

import dataclasses

from worker.engine.transcriber import Segment, Word
from worker.formats import PLAIN, SubtitleOptions, render, timestamp, to_srt, to_vtt

SEGMENTS = (Segment(0.0, 2.5, " Hello there."), Segment(2.5, 2.5, ""), Segment(3661.0004, 3662.9996, "Later on."))


def test_timestamps_follow_each_spec():
    assert timestamp(3661.0004, decimal_marker=",") == "01:01:01,000"
    assert timestamp(59.9996, decimal_marker=".") == "00:01:00.000"
    assert timestamp(-0.2, decimal_marker=",") == "00:00:00,000"


def test_srt_numbers_cues_from_one_and_skips_empty_text():
    assert to_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,000 --> 01:01:03,000\nLater on.\n"
    )


def test_vtt_has_header_and_dot_milliseconds():
    assert to_vtt(SEGMENTS) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:01:01.000 --> 01:01:03.000\nLater on.\n"
    )


def test_render_json_and_txt():
    document = {"text": "Café au lait.", "language": "fr"}
    rendered = render("json", text="", segments=SEGMENTS, document=document)
    assert rendered == '{\n  "text": "Café au lait.",\n  "language": "fr"\n}\n'  # UTF-8 kept, indented
    assert render("txt", text=" Hello there. Later on. ", segments=SEGMENTS, document={}) == "Hello there. Later on.\n"


# " And so my fellow Americans, ask not" as whisper times it: a word's leading space kept, "," a piece of its own.
WORDS = tuple(
    Word(word, start, end, 0.9)
    for word, start, end in [
        (" And", 0.3, 0.5), (" so", 0.5, 0.7), (" my", 0.7, 0.9), (" fellow", 0.9, 1.3),
        (" Americans", 1.4, 2.0), (",", 2.0, 2.05), (" ask", 2.5, 2.8), (" not", 2.8, 3.0),
    ]
)  # fmt: skip
SPOKEN = Segment(0.0, 3.2, " And so my fellow Americans, ask not", words=WORDS)


def test_no_subtitle_options_write_todays_cues_whatever_the_segment_carries():
    labelled = dataclasses.replace(SPOKEN, speaker="A")
    assert (
        to_srt([labelled], subtitles=PLAIN)
        == "1\n00:00:00,000 --> 00:00:03,200\nA: And so my fellow Americans, ask not\n"
    )
    vtt = "WEBVTT\n\n00:00:00.000 --> 00:00:03.200\n<v A>And so my fellow Americans, ask not\n"
    assert render("vtt", text="", segments=[labelled], document={}) == vtt == to_vtt([labelled], subtitles=PLAIN)
    spaced = Segment(0.0, 1.0, " Well,  well ", words=(Word(" Well,", 0.1, 0.4, 0.9), Word(" well", 0.5, 0.9, 0.9)))
    assert to_srt([spaced]) == "1\n00:00:00,000 --> 00:00:01,000\nWell,  well\n"  # the text as whisper wrote it


def test_lines_wrap_between_words_and_a_longer_word_keeps_its_own_line():
    text = " And so my fellow Americans, ask not what your country can do for you"
    wrapped = to_srt([Segment(0.0, 5.0, text)], subtitles=SubtitleOptions(max_line_width=16))
    assert wrapped.split("\n")[2:-1] == [
        "And so my fellow",
        "Americans, ask",
        "not what your",
        "country can do",
        "for you",
    ]
    narrow = to_srt([Segment(0.0, 5.0, " ask Americans, not")], subtitles=SubtitleOptions(max_line_width=5))
    assert narrow.split("\n")[2:-1] == ["ask", "Americans,", "not"]


def test_lines_beyond_the_count_start_new_cues_timed_by_their_words():
    srt = to_srt([SPOKEN], subtitles=SubtitleOptions(max_line_width=10, max_line_count=2))
    assert srt == (
        "1\n00:00:00,000 --> 00:00:01,300\nAnd so my\nfellow\n\n"  # from the segment's start to "fellow"'s end
        "2\n00:00:01,400 --> 00:00:03,200\nAmericans,\nask not\n"  # from "Americans"' start to the segment's end
    )


def test_without_word_times_the_cues_share_the_segment_by_characters():
    plain = dataclasses.replace(SPOKEN, words=None)  # 35 characters over 3.2 s
    srt = to_srt([plain], subtitles=SubtitleOptions(max_line_width=10, max_line_count=2))
    assert (
        srt
        == "1\n00:00:00,000 --> 00:00:01,554\nAnd so my\nfellow\n\n2\n00:00:01,554 --> 00:00:03,200\nAmericans,\nask not\n"
    )
    # Words that do not spell the text are not its times either.
    stray = dataclasses.replace(SPOKEN, words=WORDS[:3])
    assert to_srt([stray], subtitles=SubtitleOptions(max_line_width=10, max_line_count=2)) == srt


def test_highlighted_words_get_a_cue_each_and_the_gaps_the_plain_cue():
    vtt = to_vtt([Segment(2.3, 3.1, " ask not", words=WORDS[-2:])], subtitles=SubtitleOptions(highlight_words=True))
    assert vtt == (
        "WEBVTT\n\n"
        "00:00:02.300 --> 00:00:02.500\nask not\n\n"
        "00:00:02.500 --> 00:00:02.800\n<u>ask</u> not\n\n"
        "00:00:02.800 --> 00:00:03.000\nask <u>not</u>\n\n"
        "00:00:03.000 --> 00:00:03.100\nask not\n"
    )
    cues = to_srt([SPOKEN], subtitles=SubtitleOptions(max_line_width=20, highlight_words=True)).split("\n\n")
    # Eight pieces, seven words: "," joined the word before it, and is underlined with it.
    assert sum("<u>" in cue for cue in cues) == 7
    assert cues[6] == "7\n00:00:01,400 --> 00:00:02,050\nAnd so my fellow\n<u>Americans,</u> ask not"
    assert cues[-1] == "11\n00:00:03,000 --> 00:00:03,200\nAnd so my fellow\nAmericans, ask not\n"
    # Without word times nothing can be highlighted: the plain cues.
    plain = dataclasses.replace(SPOKEN, words=None)
    assert to_srt([plain], subtitles=SubtitleOptions(highlight_words=True)) == to_srt([plain])


def test_every_cue_keeps_its_speaker_on_its_first_line():
    labelled = dataclasses.replace(SPOKEN, speaker="A")
    options = SubtitleOptions(max_line_width=10, max_line_count=2)
    assert (
        to_srt([labelled], subtitles=options).split("\n\n")[1]
        == "2\n00:00:01,400 --> 00:00:03,200\nA: Americans,\nask not\n"
    )
    vtt = to_vtt([labelled], subtitles=dataclasses.replace(options, highlight_words=True))
    assert "\n<v A>And so <u>my</u>\nfellow\n" in vtt and "\n<v A>Americans,\nask <u>not</u>\n" in vtt
