"""Bad inputs, one worker process for all of them: each gets a failed result with its own error
code and a dead-letter entry, and the worker goes on to the next job.

Every URL here is on 127.0.0.1 (or `localhost`, which the worker must refuse without connecting).
"""

import collections
import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import Client, Service, WorkerProcess, completed_ids, new_topology, stop_and_check

from worker.media.audio import write_wav

from .conftest import LEDGER

GOOD = "jfk_inaugural_1961.flac"


class Downloads(http.server.SimpleHTTPRequestHandler):
    """Serves ../shared/audio, plus /status/N, /loop (redirects to itself) and /redirect-out."""

    requests: collections.Counter  # path -> requests seen, set per server

    def do_GET(self) -> None:
        self.requests[self.path] += 1
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.rsplit("/", 1)[1]))
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path == "/redirect-out":  # to a host outside ALLOWED_URL_HOSTS
            self._redirect(f"http://localhost:{self.server.server_address[1]}/{GOOD}")
        elif self.path == "/redirect-private":  # this server again, by another origin: loopback, not allowed
            self._redirect(f"http://127.0.0.1:{self.server.server_address[1] + 1}/{GOOD}")
        else:
            super().do_GET()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def downloads(audio_dir) -> Iterator[tuple[str, collections.Counter]]:
    seen: collections.Counter = collections.Counter()
    handler = type("Handler", (Downloads,), {"requests": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(audio_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def prepare_inputs(input_dir: Path, audio_dir: Path) -> None:
    input_dir.mkdir()
    shutil.copyfile(audio_dir / GOOD, input_dir / GOOD)
    (input_dir / "notes.mp3").write_text("Meeting notes, not audio.\n")
    (input_dir / "truncated.mp3").write_bytes((audio_dir / "librivox_shakespeare_sonnet001.mp3").read_bytes()[:200_001])
    (input_dir / "empty.mp3").write_bytes(b"")
    write_wav(input_dir / "header-only.wav", np.zeros(0, dtype=np.float32))
    write_wav(input_dir / "silence.wav", np.zeros(5 * 16000, dtype=np.float32))
    shutil.copyfile(audio_dir / "librivox_shakespeare_sonnet001.mp3", input_dir / "long.mp3")  # 53 s > 30 s
    (input_dir / "a-directory").mkdir()
    (input_dir / "outside.flac").symlink_to(audio_dir / GOOD)


@pytest.fixture(scope="module")
def bad_input_service(
    broker, tmp_path_factory, audio_dir, downloads
) -> Iterator[tuple[Service, Client, WorkerProcess]]:
    svc = Service(broker_url=broker, root=tmp_path_factory.mktemp("bad-inputs"), topology=new_topology(2))
    prepare_inputs(svc.input_dir, audio_dir)
    client = svc.client()
    # The download server's origin, and only it, is allowed past the refusal of loopback addresses.
    worker = svc.start_worker(
        allowed_url_hosts="127.0.0.1",
        allowed_private_origins=downloads[0],
        max_audio_seconds=30,
        download_timeout_seconds=5,
    )
    worker.wait_for("Consuming")
    yield svc, client, worker
    client.close()
    stop_and_check(svc)


def scratch_files(svc: Service) -> list[Path]:
    """Files under WORK_DIR other than the live worker's lock: must be none between jobs."""
    return [p for p in svc.work_dir.rglob("*") if p.is_file() and p.name != ".owner.lock"]


def job(job_id: str, **fields) -> dict:
    return {"job_id": job_id, **fields}


def path_job(job_id: str, path: str) -> dict:
    return job(job_id, audio={"path": path})


def url_job(job_id: str, url: str) -> dict:
    return job(job_id, audio={"url": url})


# (id, the job: a dict, raw bytes, or a function of the download server's base URL, the error code)
CASES = [
    ("not-json", b"{job_id: 1", "MalformedJob"),
    ("not-utf8", b'{"job_id": "x\xff\xfe"}', "MalformedJob"),
    ("json-array", b'[{"job_id": "a", "audio": {"path": "a.flac"}}]', "MalformedJob"),
    ("empty-body", b"", "MalformedJob"),
    ("ten-mb-body", b'{"job_id": "big", "pad": "' + b"x" * (10 * 2**20) + b'"}', "MalformedJob"),
    ("missing-job-id", json.dumps({"audio": {"path": GOOD}}).encode(), "InvalidJob"),
    ("url-and-path", job("url-and-path", audio={"path": GOOD, "url": "http://127.0.0.1/a.mp3"}), "InvalidJob"),
    ("no-audio-source", job("no-audio-source", audio={}), "InvalidJob"),
    ("unknown-field", job("unknown-field", audio={"path": GOOD}, priority="high"), "InvalidJob"),
    ("wrong-types", job("wrong-types", audio={"path": 42}, formats="srt", task=1), "InvalidJob"),
    ("unknown-model", job("unknown-model", audio={"path": GOOD}, model="huge-v9"), "UnknownModel"),
    ("unknown-format", job("unknown-format", audio={"path": GOOD}, formats=["docx"]), "InvalidJob"),
    ("unknown-language", job("unknown-language", audio={"path": GOOD}, language="xx"), "InvalidJob"),
    (
        "language-for-english-model",
        job("language-for-english-model", audio={"path": GOOD}, language="de"),
        "InvalidJob",
    ),
    ("absolute-path", lambda svc, url: path_job("absolute-path", str(svc.input_dir / GOOD)), "InputNotAllowed"),
    ("dotdot-escape", path_job("dotdot-escape", "../../../etc/passwd"), "InputNotAllowed"),
    ("symlink-outside", path_job("symlink-outside", "outside.flac"), "InputNotAllowed"),
    ("directory", path_job("directory", "a-directory"), "InputNotFound"),
    ("missing-file", path_job("missing-file", "no-such-file.mp3"), "InputNotFound"),
    ("file-url", url_job("file-url", "file:///etc/passwd"), "InputNotAllowed"),
    ("ftp-url", url_job("ftp-url", "ftp://127.0.0.1/a.mp3"), "InputNotAllowed"),
    ("gopher-url", url_job("gopher-url", "gopher://127.0.0.1:70/1"), "InputNotAllowed"),
    ("http-404", lambda svc, url: url_job("http-404", f"{url}/status/404"), "InputNotFound"),
    ("http-500", lambda svc, url: url_job("http-500", f"{url}/status/500"), "DownloadFailed"),
    ("redirect-loop", lambda svc, url: url_job("redirect-loop", f"{url}/loop"), "DownloadRejected"),
    (
        "host-not-allowed",
        lambda svc, url: url_job("host-not-allowed", url.replace("127.0.0.1", "localhost") + f"/{GOOD}"),
        "InputNotAllowed",
    ),
    (
        "redirect-to-host-not-allowed",
        lambda svc, url: url_job("redirect-to-host-not-allowed", f"{url}/redirect-out"),
        "InputNotAllowed",
    ),
    (
        "redirect-to-private-address",
        lambda svc, url: url_job("redirect-to-private-address", f"{url}/redirect-private"),
        "InputNotAllowed",
    ),
    ("loopback-url", url_job("loopback-url", "http://127.0.0.1:9411/metrics"), "InputNotAllowed"),
    ("text-renamed-mp3", path_job("text-renamed-mp3", "notes.mp3"), "AudioDecodeError"),
    ("truncated-mp3", path_job("truncated-mp3", "truncated.mp3"), "AudioDecodeError"),
    ("zero-byte-file", path_job("zero-byte-file", "empty.mp3"), "EmptyAudio"),
    ("wav-header-no-frames", path_job("wav-header-no-frames", "header-only.wav"), "EmptyAudio"),
    ("longer-than-max", path_job("longer-than-max", "long.mp3"), "AudioTooLong"),
]


@pytest.mark.parametrize(("case", "body", "code"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_fails_with_its_code_and_is_dead_lettered(bad_input_service, downloads, case, body, code):
    svc, client, worker = bad_input_service
    base_url, seen = downloads
    if callable(body):
        body = body(svc, base_url)

    client.enqueue(body, message_id=case)
    dead = client.collect(
        svc.topology.dead_letter_queue, lambda ms: bool(ms), alive=lambda: worker.wait_for("Consuming")
    )
    results = client.results(lambda rs: bool(rs), timeout=30)

    (properties, dead_body), (result,) = dead[0], results
    assert properties.headers["x-job-id"] == result.job_id == case  # the message id names unreadable jobs
    assert dead_body == (body if isinstance(body, bytes) else json.dumps(body).encode())  # kept for a replay
    assert (result.status, result.error.code, properties.headers["x-error-code"]) == ("failed", code, code)
    assert result.error.message and result.text is None
    if code == "DownloadFailed":
        assert result.attempt == svc.topology.delivery_limit  # transient: retried, then given up
    if case == "host-not-allowed":
        assert seen[f"/{GOOD}"] == 0  # refused before any connection
    if case == "redirect-to-host-not-allowed":
        assert seen["/redirect-out"] == 1 and seen[f"/{GOOD}"] == 0
    if case in ("loopback-url", "redirect-to-private-address"):  # 127.0.0.1 is an allowed host, not an allowed origin
        assert "non-public address (loopback)" in result.error.message and seen[f"/{GOOD}"] == 0
    assert scratch_files(svc) == []
    LEDGER.bad_inputs.append(case)


def test_silence_is_valid_and_gives_an_empty_transcript(bad_input_service):
    svc, client, worker = bad_input_service
    client.enqueue(path_job("silence", "silence.wav"))
    (result,) = client.results(lambda rs: bool(rs), alive=lambda: worker.wait_for("Consuming"))
    assert (result.job_id, result.status, result.text, result.segments) == ("silence", "completed", "", [])
    assert client.depth(svc.topology.dead_letter_queue) == 0 and scratch_files(svc) == []
    LEDGER.account({"silence"}, completed_ids([result]))


def test_the_worker_still_transcribes_after_every_bad_input(bad_input_service, downloads):
    svc, client, worker = bad_input_service
    base_url, _ = downloads
    client.enqueue(path_job("good-path", GOOD))
    client.enqueue(url_job("good-url", f"{base_url}/{GOOD}"))
    results = client.results(lambda rs: len(rs) == 2, alive=lambda: worker.wait_for("Consuming"))

    assert completed_ids(results) == ["good-path", "good-url"]
    assert all("ask not what your country" in r.text.lower() for r in results)
    assert worker.process.poll() is None and worker.log().count("Consuming") == 1  # never crashed or reconnected
    assert client.depth(svc.topology.jobs_queue) == 0 and client.depth(svc.topology.dead_letter_queue) == 0
    LEDGER.account({"good-path", "good-url"}, completed_ids(results))
    assert "Traceback" not in worker.log() and scratch_files(svc) == []
