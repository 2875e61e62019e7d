"""Subtitle and text writers."""

from worker.engine.transcriber import Segment
from worker.formats import render, timestamp, to_srt, to_vtt

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
