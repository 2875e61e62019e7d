"""Faults survived: killed workers, a restarted broker, a late broker, bad callbacks and downloads,
a corrupted model. Each test runs real worker processes against a real rabbitmq-server.
"""

import dataclasses
import http.server
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from harness import completed_ids

from worker.devtools.local_broker import free_port
from worker.engine.models import Sidecar, file_digests
from worker.messages import Result

from .conftest import LEDGER, assert_no_secret

LONG = "ljspeech_LJ001-0001_to_0032_concat.wav"  # 231 s of speech: a job long enough to interrupt
SHORT = "jfk_inaugural_1961.flac"


def results_of(client, messages) -> list[Result]:
    return [Result.model_validate_json(body) for _, body in messages]


def exactly_one_completed(client, job_id: str, worker) -> list[Result]:
    """Wait for the job's completed result, then drain: every result that arrived for it."""
    results = client.results(lambda rs: job_id in completed_ids(rs), alive=lambda: worker.wait_for("Consuming"))
    results += results_of(client, client.drain(client.topology.results_queue, settle_seconds=2))
    LEDGER.account({job_id}, completed_ids(results))
    assert completed_ids(results) == [job_id], [r.model_dump() for r in results]
    assert client.depth(client.topology.jobs_queue) == 0
    assert client.depth(client.topology.dead_letter_queue) == 0
    return results


def test_a_worker_killed_mid_job_loses_nothing(service, audio_dir):
    shutil.copyfile(audio_dir / LONG, service.input_dir / LONG)
    client = service.client()
    first = service.start_worker()
    first.wait_for("Consuming")

    client.enqueue({"job_id": "killed-1", "audio": {"path": LONG}})
    first.wait_for("Starting transcription: chunk_0000.wav")
    first.kill()
    assert client.depth(service.topology.results_queue) == 0  # killed before it could publish
    second = service.start_worker()

    results = exactly_one_completed(client, "killed-1", second)
    assert results[0].attempt == 2  # the broker redelivered the unacknowledged job
    assert "Removed 1 scratch directory left by stopped workers" in second.log()
    LEDGER.faults_survived.append("worker SIGKILL mid-job")
    client.close()


def test_a_worker_killed_holding_a_bulk_and_an_interactive_job_loses_and_duplicates_neither(service, audio_dir):
    shutil.copyfile(audio_dir / LONG, service.input_dir / LONG)
    client = service.client()
    first = service.start_worker(fanout_min_seconds=0)
    first.wait_for("Consuming")
    client.enqueue({"job_id": "bulk-killed", "audio": {"path": LONG}})
    first.wait_for("Starting transcription: chunk_0000.wav")
    client.enqueue({"job_id": "asked-killed", "audio": {"path": LONG}}, interactive=True)
    first.wait_for("Processing job asked-killed")  # the lane holds the bulk job's calls back now
    first.kill()
    second = service.start_worker(fanout_min_seconds=0)

    ids = {"bulk-killed", "asked-killed"}
    results = client.results(lambda rs: ids <= set(completed_ids(rs)), alive=lambda: second.wait_for("Consuming"))
    results += results_of(client, client.drain(client.topology.results_queue, settle_seconds=2))
    LEDGER.account(ids, completed_ids(results))
    assert sorted(completed_ids(results)) == sorted(ids) and {r.attempt for r in results} == {2}
    for queue in (client.topology.jobs_queue, client.topology.interactive_queue, client.topology.dead_letter_queue):
        assert client.depth(queue) == 0
    LEDGER.faults_survived.append("worker SIGKILL holding a bulk and an interactive job")
    client.close()


def test_a_broker_restart_mid_job_loses_and_duplicates_nothing(own_broker, own_service, audio_dir):
    own_broker.start()
    shutil.copyfile(audio_dir / LONG, own_service.input_dir / LONG)
    client = own_service.client()
    worker = own_service.start_worker()
    worker.wait_for("Consuming")
    client.enqueue({"job_id": "restart-1", "audio": {"path": LONG}})
    client.close()

    worker.wait_for("Starting transcription: chunk_0000.wav")
    own_broker.stop()
    worker.wait_for("reconnecting in")
    own_broker.start()
    worker.wait_for("Consuming", count=2)

    client = own_service.client()
    results = exactly_one_completed(client, "restart-1", worker)
    assert results[0].duration_seconds > 230 and len(results[0].text) > 1000
    assert_no_secret(own_broker.password, worker.log(), *(r.model_dump_json() for r in results))
    LEDGER.faults_survived.append("broker restart mid-job")
    client.close()


def test_a_worker_started_before_its_broker_waits_quietly_then_serves(own_broker, own_service, audio_dir):
    shutil.copyfile(audio_dir / SHORT, own_service.input_dir / SHORT)
    worker = own_service.start_worker(log_level="DEBUG")
    worker.wait_for("reconnecting in", count=2)

    before = worker.cpu_seconds()
    time.sleep(5)
    waiting_cpu = worker.cpu_seconds() - before
    assert waiting_cpu < 0.25, f"{waiting_cpu:.2f} CPU-seconds in 5 s of waiting: the retry loop spins"

    own_broker.start()
    worker.wait_for("Consuming")
    client = own_service.client()
    client.enqueue({"job_id": "late-broker", "audio": {"path": SHORT}})
    results = exactly_one_completed(client, "late-broker", worker)
    assert "ask not what your country" in results[0].text.lower()
    # The URL carries a password; DEBUG logging, refused connections and a job all went by.
    assert_no_secret(own_broker.password, worker.log(), *(r.model_dump_json() for r in results))
    LEDGER.faults_survived.append("broker unreachable at start")
    client.close()


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # clients that hung up are the point here
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_callback_that_is_down_or_slow_does_not_cost_the_result(service, audio_dir):
    calls: list[str] = []

    class SlowCallback(Quiet):
        def do_POST(self) -> None:
            calls.append(self.path)
            time.sleep(2)  # longer than CALLBACK_TIMEOUT_SECONDS
            self.send_response(204)
            self.end_headers()

    shutil.copyfile(audio_dir / SHORT, service.input_dir / SHORT)
    client = service.client()
    with http_server(SlowCallback) as slow:
        down_origin = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        down = f"{down_origin}/done"
        worker = service.start_worker(
            callback_retries=2, callback_timeout_seconds=0.5, allowed_private_origins=f"{slow},{down_origin}"
        )
        client.enqueue({"job_id": "cb-down", "audio": {"path": SHORT}, "callback_url": down})
        client.enqueue({"job_id": "cb-slow", "audio": {"path": SHORT}, "callback_url": f"{slow}/done"})
        results = client.results(
            lambda rs: {"cb-down", "cb-slow"} <= set(completed_ids(rs)), alive=lambda: worker.wait_for("Consuming")
        )

    results += results_of(client, client.drain(service.topology.results_queue))
    LEDGER.account({"cb-down", "cb-slow"}, completed_ids(results))
    assert sorted(completed_ids(results)) == ["cb-down", "cb-slow"]
    for result in results:
        assert "ask not what your country" in result.text.lower()
        assert len(result.warnings) == 1 and "failed after 3 attempts" in result.warnings[0]
    assert calls == ["/done"] * 3  # bounded: CALLBACK_RETRIES=2 means 3 attempts, then give up
    assert client.depth(service.topology.dead_letter_queue) == 0
    LEDGER.faults_survived += ["callback endpoint down", "callback endpoint slow"]
    client.close()


def test_a_corrupted_model_file_is_detected_and_replaced(service, audio_dir, offline_downloader):
    _, in_use = offline_downloader.provide("tiny.en")  # the file WHISPER_MODEL=tiny.en stands for
    service.models_dir = service.root / "models"
    service.models_dir.mkdir()
    model = service.models_dir / in_use.name
    shutil.copyfile(in_use, model)
    shutil.copyfile(Sidecar.path_for(in_use), Sidecar.path_for(model))
    shutil.copyfile(audio_dir / SHORT, service.input_dir / SHORT)
    client = service.client()

    first = service.start_worker()
    client.enqueue({"job_id": "model-1", "audio": {"path": SHORT}})
    exactly_one_completed(client, "model-1", first)
    assert first.stop() == 0

    size = model.stat().st_size
    with open(model, "r+b") as f:  # same size, different bytes: only a checksum can tell
        f.seek(size // 2)
        f.write(bytes(4096))
    assert model.stat().st_size == size

    second = service.start_worker()
    second.wait_for("Consuming")
    assert "is invalid (checksum mismatch" in second.log() and "replacing it" in second.log()
    client.enqueue({"job_id": "model-2", "audio": {"path": SHORT}})
    results = exactly_one_completed(client, "model-2", second)
    assert "ask not what your country" in results[0].text.lower()
    assert file_digests(model)[1] == Sidecar.read(model).sha256
    LEDGER.faults_survived.append("model file corrupted on disk")
    client.close()


class BadDownloads(Quiet):
    """/stall sends headers and a little data, then nothing; /unannounced streams more than the limit."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        if self.path == "/stall":
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(bytes(1000))
            self.wfile.flush()
            time.sleep(10)
        elif self.path == "/unannounced":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(40):  # 40 x 8 KiB = 320 KiB, no Content-Length
                block = bytes(8192)
                self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")


def test_a_stalled_or_oversized_download_fails_clearly(service):
    service.topology = dataclasses.replace(service.topology, delivery_limit=2)
    client = service.client()
    with http_server(BadDownloads) as server:
        worker = service.start_worker(
            download_timeout_seconds=1, max_download_bytes=100_000, allowed_private_origins=server
        )
        client.enqueue({"job_id": "stall", "audio": {"url": f"{server}/stall"}})
        client.enqueue({"job_id": "unannounced", "audio": {"url": f"{server}/unannounced"}})
        dead = client.collect(
            service.topology.dead_letter_queue, lambda ms: len(ms) == 2, alive=lambda: worker.wait_for("Consuming")
        )

    reasons = {p.headers["x-job-id"]: (p.headers["x-error-code"], p.headers["x-error-message"]) for p, _ in dead}
    assert reasons["stall"][0] == "DownloadFailed" and "timed out" in reasons["stall"][1]
    assert reasons["unannounced"] == (
        "InputTooLarge",
        f"audio at {server}/unannounced is over the limit of 100000 bytes",
    )
    results = results_of(client, client.drain(service.topology.results_queue))
    failed = {r.job_id: r.error.code for r in results if r.status == "failed"}
    assert failed["unannounced"] == "InputTooLarge" and failed["stall"] == "DownloadFailed"
    assert [r.attempt for r in results if r.job_id == "stall"][-1] == 2  # retried up to DELIVERY_LIMIT
    LEDGER.faults_survived += ["download stalls", "download over MAX_DOWNLOAD_BYTES"]
    client.close()


# The broker checks consumer timeouts on its channel tick (60 s by default): 1 s here, so that a
# 3 s consumer_timeout bites within seconds, as 30 min does in production.
SHORT_CONSUMER_TIMEOUT = {
    "config": {"consumer_timeout": "3000"},
    "advanced": "[{rabbit, [{channel_tick_interval, 1000}]}].\n",
}


def test_a_job_longer_than_the_consumer_timeout_completes_once_and_the_worker_serves_on(
    own_broker, own_service, audio_dir
):
    own_broker.start(**SHORT_CONSUMER_TIMEOUT)
    own_service.topology = dataclasses.replace(own_service.topology, delivery_limit=20)  # docs/operations.md
    shutil.copyfile(audio_dir / LONG, own_service.input_dir / LONG)
    shutil.copyfile(audio_dir / SHORT, own_service.input_dir / SHORT)
    client = own_service.client()
    worker = own_service.start_worker(max_parallel_workers=1, whisper_threads=1)  # a job of 10 s or more
    worker.wait_for("Consuming")

    client.enqueue({"job_id": "held-1", "audio": {"path": LONG}})
    worker.wait_for("The broker closed the channel")  # the consumer timeout, while transcribing
    worker.wait_for("Consuming", count=2)  # ... and the worker subscribed again
    results = exactly_one_completed(client, "held-1", worker)
    assert results[0].duration_seconds > 230
    log = worker.log()
    assert log.count("Processing job held-1") == 1  # transcribed once; redeliveries got that result
    assert "its result was never published; publishing it now" in log

    client.enqueue({"job_id": "after-1", "audio": {"path": SHORT}})  # the worker still serves
    exactly_one_completed(client, "after-1", worker)
    LEDGER.faults_survived.append("job longer than the broker's consumer_timeout")
    client.close()


def test_a_cancelled_consumer_subscribes_again(own_broker, own_service, audio_dir):
    own_broker.start()
    shutil.copyfile(audio_dir / SHORT, own_service.input_dir / SHORT)
    worker = own_service.start_worker()
    worker.wait_for("Consuming")
    client = own_service.client()

    client.channel.queue_delete(own_service.topology.jobs_queue)  # an operator's mistake
    worker.wait_for("The broker cancelled the consumer")
    worker.wait_for("Consuming", count=2)  # declared the queue again, and subscribed

    client.enqueue({"job_id": "resubscribed-1", "audio": {"path": SHORT}})
    exactly_one_completed(client, "resubscribed-1", worker)
    LEDGER.faults_survived.append("consumer cancelled by the broker")
    client.close()


def test_healthz_answers_503_while_the_worker_is_not_consuming(own_broker, own_service, audio_dir):
    own_broker.start()
    client = own_service.client()
    jobs = own_service.topology.jobs_queue
    # The jobs queue exists with other arguments: the worker connects but cannot subscribe.
    client.channel.queue_delete(jobs)
    client.channel.queue_declare(jobs, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 99})
    port = free_port()
    worker = own_service.start_worker(metrics_port=port)
    worker.wait_for("refused the topology")
    assert healthz(port) == 503

    client.channel.queue_delete(jobs)  # put right
    worker.wait_for("Consuming")
    assert healthz(port) == 200
    client.close()


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_signal_while_the_worker_starts_exits_cleanly(service):
    """SIGTERM while the model loads (before any job is held): exit 0 and no scratch left, not death by signal."""
    worker = service.start_worker()
    worker.wait_for("Ensuring model exists")  # start-up has begun; consuming has not
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(60) == 0, worker.log()[-2000:]
    assert "Consuming" not in worker.log() and "Traceback" not in worker.log() and service.leftovers() == []
