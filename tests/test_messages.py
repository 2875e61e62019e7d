"""The job contract at the edge: what parse_job accepts, and the typed error for what it refuses."""

import json

import pika.data
import pytest

from worker.engine import libwhisper
from worker.errors import InvalidJob, MalformedJob
from worker.formats import PLAIN, SubtitleOptions
from worker.messages import LANGUAGES, MAX_JOB_BYTES, job_id_of, parse_job
from worker.messages.fanout import ChunkTask, parse_chunk_task

GOOD = {"job_id": "a-1", "audio": {"path": "a.flac"}}


def body(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_minimal_job_gets_the_documented_defaults():
    job = parse_job(body())
    assert (job.job_id, job.audio.path, job.language, job.task, job.formats) == (
        "a-1",
        "a.flac",
        None,
        "transcribe",
        ("json",),
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'[{"job_id": "a"}]', "a JSON list, not an object"),
        (b'"job"', "a JSON str, not an object"),
        (b" " * (MAX_JOB_BYTES + 1), f"over the limit of {MAX_JOB_BYTES}"),
    ],
    ids=["empty", "not-json", "not-utf8", "array", "string", "too-large"],
)
def test_a_body_that_is_not_a_json_object_is_malformed(raw, message):
    with pytest.raises(MalformedJob, match=message):
        parse_job(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (json.dumps({"audio": {"path": "a.flac"}}).encode(), "job_id: Field required"),
        (body(audio={"path": "a.flac", "url": "http://127.0.0.1/a.mp3"}), "exactly one of 'url' or 'path'"),
        (body(audio={}), "exactly one of 'url' or 'path'"),
        (body(priority=3), "priority: Extra inputs are not permitted"),
        (body(job_id=7), "job_id: Input should be a valid string"),
        (body(formats="srt"), "formats: Input should be a valid tuple"),
        (body(formats=["docx"]), "formats.0: Input should be"),
        (body(language="xx"), "'xx' is not a language code whisper knows"),
        (body(task="summarise"), "task: Input should be 'transcribe' or 'translate'"),
        (body(job_id="../etc"), "job_id: String should match pattern"),
        (body(diarize="everyone"), "diarize: Input should be 'off', 'channels' or 'speakers'"),
        (body(diarize="speakers", num_speakers=0), "num_speakers: Input should be greater than or equal to 1"),
        (body(diarize="speakers", num_speakers=21), "num_speakers: Input should be less than or equal to 20"),
        (body(num_speakers=2), 'need diarize "speakers"'),
        (body(diarize="speakers", min_speakers=4, max_speakers=2), "min_speakers is above max_speakers"),
        (body(diarize="speakers", num_speakers=2, max_speakers=3), "not both"),
        (body(vad={"threshold": 1.5}), "vad.VadRequest.threshold: Input should be less than 1"),
    ],
    ids=[
        "no-job-id",
        "url-and-path",
        "neither",
        "unknown-field",
        "job-id-int",
        "formats-str",
        "unknown-format",
        "unknown-language",
        "unknown-task",
        "job-id-path",
        "unknown-diarize",
        "no-speakers",
        "too-many-speakers",
        "count-without-speakers",
        "min-over-max",
        "count-and-bounds",
        "vad-threshold",
    ],
)
def test_schema_violations_are_invalid_jobs_naming_the_field(raw, message):
    with pytest.raises(InvalidJob, match=message) as caught:
        parse_job(raw)
    assert type(caught.value) is InvalidJob


def test_language_codes_are_case_insensitive_and_auto_means_detect():
    assert parse_job(body(language="DE")).language == "de"
    assert parse_job(body(language="auto")).language is None


def test_the_language_table_is_libwhispers():
    lib = libwhisper.open_library()
    assert LANGUAGES == {lib.whisper_lang_str(i).decode() for i in range(lib.whisper_lang_max_id() + 1)}


def test_the_job_id_of_a_bad_body_is_recovered_only_when_valid():
    assert job_id_of(json.dumps({"job_id": "ok-1", "audio": 3}).encode()) == "ok-1"
    assert job_id_of(json.dumps({"job_id": "../x"}).encode()) is None
    assert job_id_of(b"[1, 2]") is None


def test_a_job_carries_a_prompt_and_a_temperature_within_bounds():
    base = {"job_id": "p-1", "audio": {"path": "a.wav"}}
    job = parse_job(json.dumps({**base, "prompt": "Gutenberg, Caxton", "temperature": 0.2}).encode())
    assert (job.prompt, job.temperature) == ("Gutenberg, Caxton", 0.2)
    assert parse_job(json.dumps(base).encode()).temperature == 0.0
    for bad in ({"prompt": "x" * 2001}, {"temperature": 1.5}, {"temperature": -0.1}, {"prompt": 7}):
        with pytest.raises(InvalidJob):
            parse_job(json.dumps({**base, **bad}).encode())


def test_a_chunk_task_survives_its_trip_through_amqp_headers():
    task = ChunkTask(
        job_id="j-1", index=2, start=16000, end=48000, chunks_total=3, model="tiny.en-q8_0",
        language="en", task="transcribe", prompt="Gutenberg — Mainz, 1455", temperature=0.3, word_timestamps=True,
    )  # fmt: skip
    # Encoded and decoded as pika does on the wire (it takes no floats, and hands strings back as bytes).
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, task.headers())
    received, _ = pika.data.decode_table(b"".join(pieces), 0)
    assert parse_chunk_task({**received, "x-delivery-count": 1}) == task


def test_subtitle_options_ask_for_word_times_only_where_srt_or_vtt_cues_need_them():
    job = parse_job(body(formats=["srt"], subtitles={"max_line_width": 42, "max_line_count": 2}))
    assert job.subtitle_options == SubtitleOptions(max_line_width=42, max_line_count=2)
    assert job.needs_word_times and not job.word_timestamps  # the cues are timed by them; the result keeps none
    assert not parse_job(body(formats=["vtt"], subtitles={"max_line_width": 42})).needs_word_times  # wrapping only
    assert parse_job(body(formats=["vtt"], subtitles={"highlight_words": True})).needs_word_times
    assert not parse_job(body(subtitles={"highlight_words": True})).needs_word_times  # json only: no cues
    assert parse_job(body()).subtitle_options == PLAIN


@pytest.mark.parametrize(
    ("subtitles", "message"),
    [
        ({"max_line_count": 2}, "max_line_count needs max_line_width"),
        ({"max_line_width": 0}, "subtitles.max_line_width: Input should be greater than or equal to 1"),
        ({"max_line_width": 1001}, "subtitles.max_line_width: Input should be less than or equal to 1000"),
        ({"max_line_width": 42, "max_line_count": 11}, "subtitles.max_line_count: Input should be less than or equal"),
        ({"max_line_width": "wide"}, "subtitles.max_line_width: Input should be a valid integer"),
        ({"highlight_words": "maybe"}, "subtitles.highlight_words: Input should be a valid boolean"),
        ({"max_words_per_line": 3}, "subtitles.max_words_per_line: Extra inputs are not permitted"),
    ],
)
def test_bad_subtitle_options_are_invalid_jobs(subtitles, message):
    with pytest.raises(InvalidJob, match=message):
        parse_job(body(formats=["srt"], subtitles=subtitles))


def test_known_speakers_need_diarize_speakers_distinct_names_and_at_most_four():
    clip = {"path": "ann.wav"}
    base = {"job_id": "j", "audio": {"path": "a.wav"}, "diarize": "speakers"}
    job = parse_job(json.dumps({**base, "known_speakers": [{"name": "Ann", "audio": clip}]}).encode())
    assert job.known_speakers[0].name == "Ann"
    bad = [
        {**base, "diarize": "channels", "known_speakers": [{"name": "Ann", "audio": clip}]},
        {**base, "known_speakers": [{"name": "Ann", "audio": clip}, {"name": "Ann", "audio": clip}]},
        {**base, "known_speakers": [{"name": f"n{k}", "audio": clip} for k in range(5)]},
        {**base, "known_speakers": [{"name": "", "audio": clip}]},
        {**base, "known_speakers": [{"name": "a\nb", "audio": clip}]},
        {**base, "known_speakers": [{"name": "Ann", "audio": {}}]},
    ]
    for document in bad:
        with pytest.raises(InvalidJob):
            parse_job(json.dumps(document).encode())


def test_keywords_are_folded_into_the_prompt_last_and_languages_are_checked_codes():
    base = {"job_id": "j", "audio": {"path": "a.wav"}}
    job = parse_job(json.dumps({**base, "prompt": "A talk on queues.", "keywords": ["RabbitMQ", "Dramatiq"]}).encode())
    assert job.decoder_prompt == "A talk on queues. RabbitMQ, Dramatiq."
    assert parse_job(json.dumps({**base, "keywords": ["whisper.cpp"]}).encode()).decoder_prompt == "whisper.cpp."
    assert parse_job(json.dumps(base).encode()).decoder_prompt is None
    assert parse_job(json.dumps({**base, "languages": ["EN", "de", "en"]}).encode()).languages == ("en", "de")
    for bad in ({"languages": ["xx"]}, {"languages": ["en"], "language": "de"}, {"keywords": [""]},
                {"prompt": "p" * 1990, "keywords": ["a long keyword"]}):  # fmt: skip
        with pytest.raises(InvalidJob):
            parse_job(json.dumps({**base, **bad}).encode())
