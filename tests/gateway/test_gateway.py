"""The gateway as its users meet it: the official `openai` client and curl against `cmd/gateway/main.py`,
with a real worker process behind a real rabbitmq-server (everything on 127.0.0.1)."""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pytest
from conftest import ROOT
from harness import Service, new_topology, stop_and_check

from worker.devtools.local_broker import free_port
from worker.media.audio import write_wav

JFK = "jfk_inaugural_1961.flac"
KEY = "test-key-1"
MAX_UPLOAD = 64 * 2**20


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen
    log_path: Path
    upload_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture(scope="module")
def gateway(broker, tmp_path_factory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gateway")
    service = Service(broker_url=broker, root=root, topology=new_topology())
    service.input_dir.mkdir()
    workers = [service.start_worker(allowed_url_hosts="127.0.0.1", max_parallel_workers=1) for _ in range(2)]
    port, uploads = free_port(), root / "uploads"
    env = service.env(
        gateway_port=port, gateway_api_keys=KEY, gateway_upload_dir=uploads, gateway_max_upload_bytes=MAX_UPLOAD
    )
    log_path = root / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "cmd/gateway/main.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    gw = Gateway(f"http://127.0.0.1:{port}", process, log_path, uploads)
    for worker in workers:
        worker.wait_for("Consuming")
    deadline = time.monotonic() + 60
    while "Publishing to" not in gw.log():
        assert gw.alive() and time.monotonic() < deadline, gw.log()
        time.sleep(0.1)
    yield gw
    process.terminate()
    process.wait(30)
    stop_and_check(service)


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_the_openai_client_transcribes_in_every_response_format(client, gateway, audio_dir):
    with open(audio_dir / JFK, "rb") as audio:
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
        assert "ask not what your country can do for you" in plain.text.lower()
        for fmt in ("text", "srt", "vtt"):
            audio.seek(0)
            body = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format=fmt)
            assert isinstance(body, str) and "your country" in body.lower()
            assert {"srt": "00:00:00,", "vtt": "WEBVTT", "text": "ask not"}[fmt] in body
        audio.seek(0)
        verbose = client.audio.transcriptions.create(model="tiny.en", file=audio, response_format="verbose_json")
    assert verbose.task == "transcribe" and verbose.language == "en" and abs(verbose.duration - 11.0) < 0.2
    assert [s.id for s in verbose.segments] == list(range(len(verbose.segments))) and verbose.segments
    assert verbose.text == " ".join(s.text for s in verbose.segments)
    assert all(0 <= s.start <= s.end <= verbose.duration + 0.01 for s in verbose.segments)
    assert list(gateway.upload_dir.iterdir()) == []  # each upload deleted when its job ended


def test_translations_and_models(client, audio_dir):
    with open(audio_dir / JFK, "rb") as audio:
        translated = client.audio.translations.create(model="whisper-1", file=audio)
    assert "your country" in translated.text.lower()
    names = [m.id for m in client.models.list()]
    assert names[0] == "whisper-1" and {"tiny.en", "base"} <= set(names)


def test_curl_uploads_with_dash_f(gateway, audio_dir):
    done = subprocess.run(
        [
            "curl",
            "-s",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-F",
            f"file=@{audio_dir / JFK}",
            "-F",
            "model=whisper-1",
            f"{gateway.url}/v1/audio/transcriptions",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    )
    assert "your country" in json.loads(done.stdout)["text"].lower()


def curl(gateway: Gateway, *fields: str, key: str | None = KEY, path: str = "/v1/audio/transcriptions"):
    """(status, JSON body) of a multipart POST made with curl."""
    command = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", f"{gateway.url}{path}"]
    if key is not None:
        command += ["-H", f"Authorization: Bearer {key}"]
    for field in fields:
        command += ["-F", field]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    body, status = out.rsplit("\n", 1)
    return int(status), json.loads(body) if body.startswith("{") else body


def test_bad_requests_get_openai_errors_and_leave_nothing(gateway, audio_dir, tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are not the samples you are looking for\n" * 20)
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes((audio_dir / JFK).read_bytes()[:20000])
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (MAX_UPLOAD + 1))
    jfk = f"file=@{audio_dir / JFK}"
    cases = {
        "empty file": ((f"file=@{empty}",), 400, "empty_file"),
        "not audio": ((f"file=@{not_audio}",), 400, "AudioDecodeError"),
        "truncated audio": ((f"file=@{truncated}",), 400, "AudioDecodeError"),
        "over the size limit": ((f"file=@{big}",), 413, "too_large"),
        "no file field": (("model=whisper-1",), 400, "invalid_field"),
        "file as a plain field": (("file=hello",), 400, "invalid_field"),
        "unknown model": ((jfk, "model=whisper-9"), 400, "model_not_found"),
        "unknown response_format": ((jfk, "response_format=docx"), 400, "invalid_field"),
        "temperature not a number": ((jfk, "temperature=warm"), 400, "invalid_field"),
        "temperature out of range": ((jfk, "temperature=7"), 400, "invalid_field"),
        "unknown language": ((jfk, "language=xx"), 400, "invalid_language"),
        "prompt (not supported yet)": ((jfk, "prompt=Kennedy"), 400, "unsupported_field"),
    }
    for name, (fields, status, code) in cases.items():
        got, body = curl(gateway, *fields)
        assert (got, body["error"]["code"]) == (status, code), name
        assert body["error"]["message"] and body["error"]["type"], name
    assert curl(gateway, jfk, key="wrong")[0] == 401
    assert curl(gateway, jfk, key=None)[1]["error"]["code"] == "invalid_api_key"
    # A path-like file name names nothing on the gateway's disk: the upload is stored under a token.
    status, body = curl(gateway, f"file=@{audio_dir / JFK};filename=../../../etc/passwd")
    assert status == 200 and "your country" in body["text"].lower()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{gateway.url}/uploads/{'A' * 43}")
    assert missing.value.code == 404
    assert gateway.alive() and list(gateway.upload_dir.iterdir()) == []
    shutil.rmtree(tmp_path)


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def test_forty_concurrent_uploads_are_all_answered_and_the_gateway_stays_small(gateway, audio_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    before = rss_mb(gateway.process.pid)
    peak = before

    def one(i: int) -> str:
        with open(audio_dir / JFK, "rb") as audio:
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0, timeout=600)
            return client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="text")

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        while not all(f.done() for f in futures):
            peak = max(peak, rss_mb(gateway.process.pid))
            time.sleep(0.2)
        texts = [f.result() for f in futures]
    assert all("your country" in t.lower() for t in texts)
    assert gateway.alive() and list(gateway.upload_dir.iterdir()) == []
    assert peak - before < 100, (before, peak)


def test_a_large_upload_streams_to_disk_not_memory(gateway, tmp_path):
    big = tmp_path / "half-hour-of-silence.wav"
    write_wav(big, np.zeros(30 * 60 * 16000, dtype=np.float32))  # 57.6 MB, under the limit
    before = rss_mb(gateway.process.pid)
    Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")  # the kernel's peak RSS starts again
    status, body = curl(gateway, f"file=@{big}")
    assert (status, body["text"]) == (200, "")
    peak = rss_mb(gateway.process.pid, "VmHWM")
    assert peak - before < big.stat().st_size / 2**20 / 4, (before, peak)  # far from a copy in memory
    assert list(gateway.upload_dir.iterdir()) == []
