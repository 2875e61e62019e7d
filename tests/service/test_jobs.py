"""JobHandler without a broker: the per-message policy on a real transcriber and real audio."""

import dataclasses
import json
import shutil

import pytest

from worker.egress import EgressPolicy
from worker.errors import InputNotAllowed
from worker.messages import Result, parse_job
from worker.pipeline import PipelineOptions, Processor
from worker.service.asked import diarization_of
from worker.service.jobs import HandlerOptions, JobHandler
from worker.service.outcome import Delivery


@pytest.fixture
def handler(transcriber, tmp_path, audio_dir) -> JobHandler:
    (tmp_path / "in").mkdir()
    shutil.copyfile(audio_dir / "jfk_inaugural_1961.flac", tmp_path / "in" / "jfk.flac")
    (tmp_path / "work").mkdir()
    processor = Processor(
        transcriber, model_name="tiny.en", options=PipelineOptions(workers=2), work_root=tmp_path / "work"
    )
    return JobHandler(
        lambda model: processor,
        HandlerOptions(input_dir=tmp_path / "in", output_dir=tmp_path / "out", work_dir=tmp_path / "work"),
    )


def test_a_result_whose_publish_was_lost_is_reused_not_recomputed(handler, log_messages, tmp_path):
    body = json.dumps({"job_id": "dropped", "audio": {"path": "jfk.flac"}}).encode()

    first = handler.handle(Delivery(body=body))
    # The connection dropped before `first` was published: the broker redelivers the job.
    second = handler.handle(Delivery(body=body, attempt=2))

    assert first.action == second.action == "complete"
    assert second.result.text == first.result.text and "ask not" in first.result.text.lower()
    assert second.result.attempt == 2
    assert sum(m.startswith("Processing job dropped") for _, m in log_messages) == 1  # transcribed once
    handler.mark_published(second.result)
    assert handler.handle(Delivery(body=body, attempt=3)).action == "ack"  # published: nothing more to do
    assert list((tmp_path / "work").iterdir()) == []  # no scratch left behind


def test_an_unreadable_body_is_named_by_its_message_id(handler):
    outcome = handler.handle(Delivery(body=b"\x00\x01", message_id="upload-77"))

    assert (outcome.action, outcome.result.job_id, outcome.error.code) == ("dead_letter", "upload-77", "MalformedJob")


@pytest.mark.parametrize(
    ("url", "allowed", "message"),
    [
        ("file:///etc/passwd", None, "scheme 'file' is not allowed"),
        ("ftp://127.0.0.1/a.mp3", None, "scheme 'ftp' is not allowed"),
        ("http:///a.mp3", None, "no host"),
        ("http://localhost:8000/a.mp3", ["127.0.0.1"], "'localhost' is not in ALLOWED_URL_HOSTS"),
    ],
)
def test_urls_are_checked_before_any_connection(url, allowed, message):
    with pytest.raises(InputNotAllowed, match=message):
        EgressPolicy.build(allowed_hosts=allowed).check_url(url)


def test_an_allowed_host_passes_in_any_case():
    EgressPolicy.build(allowed_hosts=["media.example.org"]).check_url("https://MEDIA.example.org/a.mp3")
    EgressPolicy().check_url("http://127.0.0.1:9/a.mp3")  # the form is fine; its address is refused on resolve


@pytest.mark.parametrize("field", ["audio", "callback_url"])
def test_a_url_for_this_machine_fails_the_job_before_any_work(handler, log_messages, field):
    url = "http://127.0.0.1:9411/metrics"  # the worker's own metrics, say
    job = {"job_id": f"own-{field}", "audio": {"url": url} if field == "audio" else {"path": "jfk.flac"}}
    if field == "callback_url":
        job["callback_url"] = url

    outcome = handler.handle(Delivery(body=json.dumps(job).encode()))

    assert (outcome.action, outcome.error.code) == ("dead_letter", "InputNotAllowed")
    assert "non-public address (loopback)" in outcome.error.message


def test_secrets_in_a_url_stay_out_of_results_and_logs(handler, log_messages):
    # Given URLs with credentials, and with a token in the query (to an allowed origin where nothing listens)
    secret = "s3cr3t-Token"
    handler.options = dataclasses.replace(handler.options, egress=EgressPolicy.build(origins=["http://127.0.0.1:9"]))
    jobs = {
        "userinfo": f"http://user:{secret}@127.0.0.1:9/a.mp3?token={secret}",
        "query": f"http://127.0.0.1:9/a.mp3?token={secret}&sig={secret}",
    }
    outcomes = {}
    for name, url in jobs.items():
        body = json.dumps({"job_id": name, "audio": {"url": url}, "callback_url": f"http://127.0.0.1:9/cb?k={secret}"})
        outcomes[name] = handler.handle(Delivery(body=body.encode(), attempt=5))  # the last attempt: no retry

    assert outcomes["userinfo"].error.code == "InputNotAllowed" and "credentials" in outcomes["userinfo"].error.message
    assert (
        outcomes["query"].error.code == "DownloadFailed" and "127.0.0.1:9/a.mp3?..." in outcomes["query"].error.message
    )
    for outcome in outcomes.values():
        assert secret not in outcome.result.model_dump_json()
    assert log_messages and not [m for _, m in log_messages if secret in m]


def test_a_callback_url_with_a_token_is_redacted_in_the_warning_and_logs(handler, log_messages):
    secret = "s3cr3t-Token"
    options = dict(egress=EgressPolicy.build(origins=["http://127.0.0.1:9"]), callback_retries=0)
    handler.options = dataclasses.replace(handler.options, **options)
    body = {"job_id": "cb-token", "audio": {"path": "jfk.flac"}, "callback_url": f"http://127.0.0.1:9/cb?k={secret}"}

    outcome = handler.handle(Delivery(body=json.dumps(body).encode()))

    assert outcome.action == "complete" and "http://127.0.0.1:9/cb?..." in outcome.result.warnings[0]
    assert secret not in outcome.result.model_dump_json()
    assert not [m for _, m in log_messages if secret in m]


def test_a_marker_that_cannot_be_written_does_not_raise(handler, tmp_path, log_messages):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "blocked").write_text("a file where the job's directory should be")

    handler.mark_published(Result(job_id="blocked", status="completed", text="hi"))

    assert any("marker could not be written" in m for level, m in log_messages if level == "ERROR")


def test_subtitles_timed_by_word_times_the_job_did_not_ask_to_see(handler, tmp_path):
    subtitles = {"max_line_width": 20, "max_line_count": 1, "highlight_words": True}
    body = {"job_id": "subs", "audio": {"path": "jfk.flac"}, "formats": ["json", "srt"], "subtitles": subtitles}

    outcome = handler.handle(Delivery(body=json.dumps(body).encode()))

    assert outcome.action == "complete"
    srt = (tmp_path / "out" / "subs" / "transcript.srt").read_text()
    assert "<u>ask</u>" in srt.lower()  # the words reached the srt writer...
    document = json.loads((tmp_path / "out" / "subs" / "transcript.json").read_text())
    assert all("words" not in s for s in document["segments"])  # ...and stay out of the json and the result
    assert all(s.words is None for s in outcome.result.segments)


def test_speaker_turns_keep_their_words_for_subtitles_timed_by_them():
    job = {"job_id": "d", "audio": {"path": "a.flac"}, "diarize": "speakers", "formats": ["srt"]}
    assert not diarization_of(parse_job(json.dumps(job).encode())).words  # cut at turns, then dropped
    job["subtitles"] = {"highlight_words": True}
    assert diarization_of(parse_job(json.dumps(job).encode())).words  # kept for the srt writer


def test_a_jobs_tenant_is_echoed_and_counted_on_the_workers_metrics(handler):
    from prometheus_client import REGISTRY

    from worker.service import metrics

    def counted() -> tuple[float, float, float]:
        return (
            REGISTRY.get_sample_value("transcription_tenant_jobs_total", {"tenant": "team-a", "status": "completed"})
            or 0.0,
            REGISTRY.get_sample_value("transcription_tenant_jobs_total", {"tenant": "team-a", "status": "failed"})
            or 0.0,
            REGISTRY.get_sample_value("transcription_tenant_audio_seconds_total", {"tenant": "team-a"}) or 0.0,
        )

    before = counted()
    done = handler.handle(
        Delivery(body=json.dumps({"job_id": "t-1", "audio": {"path": "jfk.flac"}, "tenant": "team-a"}).encode())
    )
    gone = handler.handle(
        Delivery(body=json.dumps({"job_id": "t-2", "audio": {"path": "gone.flac"}, "tenant": "team-a"}).encode())
    )
    for outcome in (done, gone):
        metrics.record(outcome)
    after = counted()

    assert (done.result.tenant, gone.result.tenant, gone.action) == ("team-a", "team-a", "dead_letter")
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0) and abs(after[2] - before[2] - 11.0) < 0.1
    bad = handler.handle(
        Delivery(body=json.dumps({"job_id": "t-3", "audio": {"path": "jfk.flac"}, "tenant": "a b"}).encode())
    )
    assert bad.action == "dead_letter" and "tenant" in bad.error.message
