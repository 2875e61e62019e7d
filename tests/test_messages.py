"""The job contract at the edge: what parse_job accepts, and the typed error for what it refuses."""

import json

import pytest

from worker.engine.libwhisper import context
from worker.errors import InvalidJob, MalformedJob
from worker.messages import LANGUAGES, MAX_JOB_BYTES, job_id_of, parse_job

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
    lib = context.open_library()
    assert LANGUAGES == {lib.whisper_lang_str(i).decode() for i in range(lib.whisper_lang_max_id() + 1)}


def test_the_job_id_of_a_bad_body_is_recovered_only_when_valid():
    assert job_id_of(json.dumps({"job_id": "ok-1", "audio": 3}).encode()) == "ok-1"
    assert job_id_of(json.dumps({"job_id": "../x"}).encode()) is None
    assert job_id_of(b"[1, 2]") is None
