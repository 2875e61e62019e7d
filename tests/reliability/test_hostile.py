"""Hostile requests on the real servers: a gateway with an API key, a worker behind it, a rabbitmq-server,
ffmpeg. Every request gets its typed answer, nothing is lost or duplicated, both processes keep serving
(JFK right after gives the same text as before), and a trap HTTP server on 127.0.0.1, which every
forbidden URL points at (and which stands in as the model download site), records no request at all.

Every address here is on this machine: forbidden spellings are of 127.0.0.1 and ::1 only, so even a
broken guard could reach nothing else.
"""

import collections
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from harness import Client, GatewayProcess, Service, WorkerProcess, gateway_env, new_topology, stop_and_check

from worker.devtools.local_broker import free_port

from .conftest import LEDGER

KEY = "hostile-suite-key"
JFK = "jfk_inaugural_1961.flac"
MAX_UPLOAD = 4 * 2**20
MAX_AUDIO_SECONDS = 600  # "hours of audio" stop here, typed, in a second of decoding


class Recorder(http.server.BaseHTTPRequestHandler):
    """Serves `files` (name -> bytes), `/redirect?to=URL`; records every request (method, path)."""

    seen: list
    files: dict

    def _any(self) -> None:
        self.seen.append((self.command, self.path))
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/slow/"):  # a slow source: the job's SSE stream outlasts the edge's idle limit
            time.sleep(4)
        body = self.files.get(self.path.lstrip("/").removeprefix("slow/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _any

    def log_message(self, *args) -> None:
        pass


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@dataclass
class HttpServer:
    port: int
    seen: list
    servers: list

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def serve(files: dict[str, bytes], *, port: int = 0, v6: bool = False) -> HttpServer:
    seen: list = []
    handler = type("Handler", (Recorder,), {"seen": seen, "files": files})
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)]
    if v6:  # the trap also listens on [::1], so an IPv6 spelling that got through would be recorded
        try:
            servers.append(_V6Server(("::1", servers[0].server_address[1]), handler))
        except OSError:
            pass
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return HttpServer(servers[0].server_address[1], seen, servers)


@dataclass
class Stack:
    service: Service
    client: Client
    worker: WorkerProcess
    gateway: GatewayProcess
    trap: HttpServer
    audio: HttpServer
    files: Path
    jfk: bytes
    jfk_text: str

    def post(self, path: str, *, key: str | None = KEY, **kwargs) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.post(f"{self.gateway.url}{path}", headers=headers, timeout=120, **kwargs)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_files(root: Path, audio_dir: Path, trap: str) -> Path:
    """Hostile uploads: playlists and concat lists naming URLs and local files, a tiny file of hours of audio."""
    files = root / "files"
    files.mkdir()
    jfk = audio_dir / JFK
    (files / "remote.m3u8").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{trap}/segment.ts\n#EXT-X-ENDLIST\n"
    )
    (files / "local.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:11\n#EXTINF:11,\n{jfk}\n#EXT-X-ENDLIST\n")
    (files / "playlist-as.wav").write_text((files / "remote.m3u8").read_text())
    (files / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{jfk}'\n")
    (files / "list-remote.ffconcat").write_text(f"ffconcat version 1.0\nfile '{trap}/a.flac'\n")
    # Five hours of digital silence: FLAC's constant subframes make it a few hundred kB.
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "18000", "-c:a", "flac", str(files / "hours.flac"))
    (files / "big.bin").write_bytes(os.urandom(MAX_UPLOAD + 1))
    return files


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory, audio_dir) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hostile")
    trap = serve({}, v6=True)
    audio = serve({JFK: (audio_dir / JFK).read_bytes()})
    service = Service(broker_url=broker, root=root, topology=new_topology(2))
    service.input_dir.mkdir()
    files = make_files(root, audio_dir, trap.origin)
    for name in ("remote.m3u8", "local.m3u8", "list.ffconcat", JFK):
        shutil.copyfile(files / name if name != JFK else audio_dir / name, service.input_dir / name)
    port = free_port()
    worker = service.start_worker(
        gateway_port=port,  # the worker allows exactly the gateway's origin, for its uploads
        allowed_private_origins=audio.origin,  # the one other private origin this suite allows
        whisper_download_url=f"{trap.origin}/models",  # a model download would be recorded by the trap
        max_audio_seconds=MAX_AUDIO_SECONDS,
        max_parallel_workers=1,
        callback_retries=0,
    )
    env = gateway_env(service, port, root, gateway_api_keys=KEY, gateway_max_upload_bytes=MAX_UPLOAD,
                      gateway_body_idle_seconds=2, allowed_private_origins=audio.origin)  # fmt: skip
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", env, root / "gateway.log", root / "uploads")
    client = service.client()
    try:
        gateway.start()
        worker.wait_for("Consuming")
        first = requests.post(f"{gateway.url}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                              files={"file": (audio_dir / JFK).read_bytes()}, timeout=300)  # fmt: skip
        assert first.status_code == 200, first.text
        yield Stack(
            service, client, worker, gateway, trap, audio, files, (audio_dir / JFK).read_bytes(), first.json()["text"]
        )
    finally:
        client.close()
        gateway.stop()
        trap.stop()
        audio.stop()
        stop_and_check(service)


# --- at the gateway -------------------------------------------------------------------------------------


def raw(stack: Stack, request: bytes, *, then: bytes = b"", wait: float = 30.0) -> tuple[int, bytes]:
    """Send `request` bytes on a socket (then `then`), read the answer: (status, body)."""
    with socket.create_connection(("127.0.0.1", int(stack.gateway.url.rsplit(":", 1)[1])), timeout=wait) as s:
        s.sendall(request)
        if then:
            try:
                s.sendall(then)
            except OSError:  # the gateway answered and closed without reading the rest: the point
                pass
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def head(path: str, *lines: str, length: int | None = None) -> bytes:
    extra = [f"Content-Length: {length}"] if length is not None else []
    first = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    return ("\r\n".join([*first, *lines, *extra]) + "\r\n\r\n").encode()


def code_of(response: requests.Response) -> tuple[int, str | None]:
    try:
        return response.status_code, response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return response.status_code, None


def job_failure(stack: Stack, response: requests.Response) -> tuple[int, str | None]:
    """A 202 async job: (202, the error code its record ends with) once it ended."""
    if response.status_code != 202:
        return code_of(response)
    job_id, deadline = response.json()["id"], time.monotonic() + 120
    while True:
        record = requests.get(f"{stack.gateway.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"},
                              timeout=10).json()  # fmt: skip
        if record["state"] in ("completed", "failed"):
            return 202, (record["result"]["error"] or {}).get("code")
        assert time.monotonic() < deadline, record
        time.sleep(0.2)


def forbidden_urls(stack: Stack) -> dict[str, str]:
    """Spellings of this machine's loopback (all at the trap's port), plus redirects and tricks."""
    port, allowed = stack.trap.port, stack.audio.origin
    urls = {
        "loopback": f"http://127.0.0.1:{port}/a.flac",
        "localhost": f"http://localhost:{port}/a.flac",
        "localhost uppercase": f"http://LOCALHOST:{port}/a.flac",
        "decimal ip": f"http://2130706433:{port}/a.flac",
        "octal ip": f"http://0177.0.0.1:{port}/a.flac",
        "hex ip": f"http://0x7f.0.0.1:{port}/a.flac",
        "short ip": f"http://127.1:{port}/a.flac",
        "other loopback": f"http://127.0.0.2:{port}/a.flac",
        "0.0.0.0": f"http://0.0.0.0:{port}/a.flac",
        "ipv6 loopback": f"http://[::1]:{port}/a.flac",
        "ipv4-mapped ipv6": f"http://[::ffff:127.0.0.1]:{port}/a.flac",
        "ipv4-mapped ipv6, hex": f"http://[0:0:0:0:0:ffff:7f00:1]:{port}/a.flac",
        "allowed origin's host, other port": f"http://127.0.0.1:{port}/{JFK}",
        "userinfo trick": f"http://{allowed.removeprefix('http://')}@127.0.0.1:{port}/a.flac",
        "redirect from an allowed origin": f"{allowed}/redirect?to=http://127.0.0.1:{port}/a.flac",
        "redirect to localhost": f"{allowed}/redirect?to=http://localhost:{port}/a.flac",
        "https to loopback": f"https://127.0.0.1:{port}/a.flac",
    }
    name = socket.gethostname()
    try:
        if all(a[4][0].startswith("127.") for a in socket.getaddrinfo(name, port)):
            urls["this host's name"] = f"http://{name}:{port}/a.flac"
    except OSError:
        pass
    return urls


def gateway_cases(stack: Stack) -> dict[str, tuple[Callable[[], tuple[int, str | None]], tuple[int, str | None]]]:
    files, jfk = stack.files, stack.jfk
    upload = "/v1/audio/transcriptions"

    def post(**kwargs) -> Callable[[], tuple[int, str | None]]:
        return lambda: code_of(stack.post(upload, **kwargs))

    def form(name: str, **data) -> Callable[[], tuple[int, str | None]]:
        return post(files={"file": (name, (files / name).read_bytes())}, data=data)

    def chunked(size: int):
        def body() -> Iterator[bytes]:
            for _ in range(size // 65536 + 1):
                yield b"\0" * 65536

        boundary = "b0undary"

        def parts() -> Iterator[bytes]:
            yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
            yield from body()
            yield f"\r\n--{boundary}--\r\n".encode()

        return post(data=parts(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def unauthenticated_flood() -> tuple[int, str | None]:
        # 100 MB declared, a few bytes sent: the answer comes before the body, and the body is never read.
        status, body = raw(stack, head(upload, "Content-Type: multipart/form-data; boundary=x", length=100 * 2**20),
                           then=b"--x\r\n" * 1000)  # fmt: skip
        return status, json.loads(body)["error"]["code"]

    def slow_body() -> tuple[int, str | None]:
        status, body = raw(stack, head("/v1/jobs", f"Authorization: Bearer {KEY}", "Content-Type: application/json",
                                       length=100) + b'{"url": ')  # fmt: skip
        return status, json.loads(body)["error"]["code"]

    def lying_length() -> tuple[int, str | None]:
        status, _ = raw(stack, head("/v1/jobs", f"Authorization: Bearer {KEY}", "Content-Type: application/json",
                                    length=5) + b'{"url": "http://127.0.0.1/"}' * 10)  # fmt: skip
        return status, None

    def url_job(url: str) -> Callable[[], tuple[int, str | None]]:
        return lambda: job_failure(stack, stack.post("/v1/jobs", json={"url": url}))

    def get(path: str, key: str | None = KEY) -> Callable[[], tuple[int, str | None]]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return lambda: code_of(requests.get(f"{stack.gateway.url}{path}", headers=headers, timeout=30))

    ok_file = {"file": ("jfk.flac", jfk)}
    cases = {
        "no key": (post(key=None, files=ok_file), (401, "invalid_api_key")),
        "wrong key": (post(key="nope", files=ok_file), (401, "invalid_api_key")),
        "non-ascii key": (lambda: raw_key(stack, "clé-\u00e9\u4e2d".encode()), (401, "invalid_api_key")),
        "latin-1 bytes in the key": (lambda: raw_key(stack, b"\xff\xfe\xfd"), (401, "invalid_api_key")),
        "basic auth": (
            post(key=None, files=ok_file, headers={"Authorization": "Basic " + KEY}),
            (401, "invalid_api_key"),
        ),  # fmt: skip
        "empty bearer": (post(key=None, files=ok_file, headers={"Authorization": "Bearer "}), (401, "invalid_api_key")),
        "key as prefix": (post(key=KEY[:-1], files=ok_file), (401, "invalid_api_key")),
        "10 kB key": (post(key="k" * 10_000, files=ok_file), (401, "invalid_api_key")),
        "unauthenticated 100 MB body": (unauthenticated_flood, (401, "invalid_api_key")),
        "no key on async jobs": (
            lambda: code_of(stack.post("/v1/jobs", key=None, json={"url": "http://a/"})),
            (401, "invalid_api_key"),
        ),  # fmt: skip
        "no key on the job list": (get("/v1/jobs/gw-1", key=None), (401, "invalid_api_key")),
        "declared size over the limit": (
            post(files={"file": ("big.bin", (files / "big.bin").read_bytes())}),
            (413, "too_large"),
        ),  # fmt: skip
        "chunked body over the limit": (chunked(MAX_UPLOAD + 1), (413, "too_large")),
        "chunked body over the limit, async": (
            lambda: code_of(
                stack.post("/v1/jobs", data=iter([b"x" * 65536] * 40), headers={"Content-Type": "application/json"})
            ),
            (413, "too_large"),
        ),  # fmt: skip
        "json body over 1 MiB": (
            lambda: code_of(stack.post("/v1/jobs", json={"url": "http://a/", "p": "x" * 2**21})),
            (413, "too_large"),
        ),  # fmt: skip
        "urlencoded body to an upload route": (post(data={"file": "x" * 2**21}), (413, "too_large")),
        "slow body": (slow_body, (408, "timeout")),
        "content-length lying short": (lying_length, (400, None)),
        "huge header": (post(files=ok_file, headers={"X-Pad": "a" * 20_000}), (431, "too_large")),
        "malformed multipart": (
            post(data=b"--xx\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=xx"}),
            (400, "invalid_field"),
        ),  # fmt: skip
        "multipart without a boundary": (
            post(data=b"abc", headers={"Content-Type": "multipart/form-data"}),
            (400, "invalid_request"),
        ),  # fmt: skip
        "json to an upload route": (post(json={"file": "x"}), (400, "invalid_field")),
        "text/plain to an upload route": (
            post(data="hello", headers={"Content-Type": "text/plain"}),
            (400, "invalid_field"),
        ),  # fmt: skip
        "two files on async jobs": (
            lambda: code_of(stack.post("/v1/jobs", files=[("file", ("a.flac", jfk)), ("file", ("b.flac", jfk))])),
            (400, None),
        ),
        "oversized text field": (post(files=ok_file, data={"prompt": "p" * 2_000_000}), (400, None)),
        "prompt over the limit": (post(files=ok_file, data={"prompt": "p" * 5000}), (400, "invalid_field")),
        "too many fields on async jobs": (
            lambda: code_of(stack.post("/v1/jobs", files=ok_file, data={f"f{i}": "1" for i in range(20)})),
            (400, None),
        ),
        "temperature nan": (post(files=ok_file, data={"temperature": "nan"}), (400, "invalid_field")),
        "model not allowed": (post(files=ok_file, data={"model": "large-v3"}), (400, "model_not_found")),
        "model not in the table": (post(files=ok_file, data={"model": "../../etc/passwd"}), (400, "model_not_found")),
        "unknown language": (post(files=ok_file, data={"language": "xx"}), (400, "invalid_language")),
        "unknown response format": (post(files=ok_file, data={"response_format": "pdf"}), (400, "invalid_field")),
        "bad granularity": (post(files=ok_file, data={"timestamp_granularities[]": "char"}), (400, "invalid_field")),
        "file url job": (
            lambda: code_of(stack.post("/v1/jobs", json={"url": "file:///etc/passwd"})),
            (400, "invalid_field"),
        ),  # fmt: skip
        "unknown route": (get("/v1/admin"), (404, "not_found")),
        "wrong method": (
            lambda: code_of(
                requests.delete(
                    f"{stack.gateway.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
                )
            ),
            (405, "method_not_allowed"),
        ),  # fmt: skip
        "upload token traversal": (get("/uploads/..%2F..%2Fetc%2Fpasswd"), (404, None)),
        "upload token guessed": (get("/uploads/" + "A" * 43), (404, "not_found")),
        "job id injection": (get("/v1/jobs/x'%20OR%201=1--"), (404, "not_found")),
        "events of no job": (get("/v1/jobs/nope/events"), (404, "not_found")),
        "hls playlist naming a URL": (form("remote.m3u8"), (400, "AudioDecodeError")),
        "hls playlist naming a local file": (form("local.m3u8"), (400, "AudioDecodeError")),
        "playlist named .wav": (form("playlist-as.wav"), (400, "AudioDecodeError")),
        "concat list naming a local file": (form("list.ffconcat"), (400, "AudioDecodeError")),
        "concat list naming a URL": (form("list-remote.ffconcat"), (400, "AudioDecodeError")),
        "tiny file of five hours": (form("hours.flac"), (400, "AudioTooLong")),
    }
    # The gateway refuses at once what the workers' policy refuses by the URL itself (400); a redirect shows
    # only when a worker follows it, so that job is accepted and fails there (202, then its record).
    for name, url in forbidden_urls(stack).items():
        expected = (202, "InputNotAllowed") if name.startswith("redirect") else (400, "InputNotAllowed")
        cases[f"ssrf job: {name}"] = (url_job(url), expected)
    cases["ssrf callback: loopback"] = (
        lambda: code_of(stack.post("/v1/jobs", json={"url": f"{stack.audio.origin}/{JFK}",
                                                     "callback_url": f"http://127.0.0.1:{stack.trap.port}/hook"})),
        (400, "InputNotAllowed"),
    )  # fmt: skip
    return cases


def sse_names(url: str) -> list[str]:
    with requests.get(url, headers={"Authorization": f"Bearer {KEY}"}, stream=True, timeout=120) as response:
        return [line.split(":", 1)[1].strip() for line in response.iter_lines(decode_unicode=True)
                if line.startswith("event:")]  # fmt: skip


def raw_key(stack: Stack, key: bytes) -> tuple[int, str | None]:
    """GET /v1/models with `key` as raw header bytes (no client library would send them)."""
    request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer " + key
    status, body = raw(stack, request + b"\r\n\r\n")
    return status, json.loads(body)["error"]["code"]


def test_hostile_requests_at_the_gateway_get_typed_answers_and_reach_nothing(stack):
    cases = gateway_cases(stack)
    assert len(cases) >= 40
    answers = {name: request() for name, (request, _) in cases.items()}
    wrong = {name: (answers[name], expected) for name, (_, expected) in cases.items()
             if answers[name][0] != expected[0] or (expected[1] is not None and answers[name][1] != expected[1])}  # fmt: skip
    assert wrong == {}, "\n".join(f"{name}: got {got}, expected {expected}" for name, (got, expected) in wrong.items())
    LEDGER.forbidden_outbound += len(stack.trap.seen)
    assert stack.trap.seen == [], "a forbidden address was reached"
    assert stack.gateway.alive() and "Unhandled error" not in stack.gateway.log()
    assert list(stack.gateway.upload_dir.iterdir()) == []  # refused and failed uploads leave nothing behind
    assert not [fd for fd in Path(f"/proc/{stack.gateway.process.pid}/fd").iterdir()
                if "(deleted)" in os.readlink(fd)], "spooled parts of refused bodies are still open"  # fmt: skip
    # A legitimate stream outlives the 2 s limit on idle request bodies: only the body has a deadline.
    job = stack.post("/v1/jobs", json={"url": f"{stack.audio.origin}/slow/{JFK}"}).json()
    events = sse_names(f"{stack.gateway.url}/v1/jobs/{job['id']}/events")
    assert events[0] == "state" and events[-1] == "completed", events
    # Still serving, with the same text as before the barrage.
    again = stack.post("/v1/audio/transcriptions", files={"file": (JFK, stack.jfk)})
    assert again.status_code == 200 and again.json()["text"] == stack.jfk_text
    LEDGER.hostile_gateway.extend(cases)


# --- at the worker's queue ------------------------------------------------------------------------------


def queue_cases(stack: Stack) -> dict[str, tuple[dict, str]]:
    trap = stack.trap.origin
    cases = {
        f"url: {name}": ({"audio": {"url": url}}, "InputNotAllowed") for name, url in forbidden_urls(stack).items()
    }
    cases |= {
        "callback to loopback": ({"audio": {"path": JFK}, "callback_url": f"{trap}/hook"}, "InputNotAllowed"),
        "callback to localhost": (
            {"audio": {"path": JFK}, "callback_url": f"http://localhost:{stack.trap.port}/h"},
            "InputNotAllowed",
        ),  # fmt: skip
        "credentials and token in the URL": (
            {"audio": {"url": f"http://user:s3cr3t-pass@127.0.0.1:{stack.trap.port}/a.flac?token=s3cr3t-token"}},
            "InputNotAllowed",
        ),
        "model not allowed (a 3 GB download)": ({"audio": {"path": JFK}, "model": "large-v3"}, "ModelNotAllowed"),
        "model in the table, not offline": ({"audio": {"path": JFK}, "model": "tiny"}, "ModelNotAllowed"),
        "hls playlist naming a URL": ({"audio": {"path": "remote.m3u8"}}, "AudioDecodeError"),
        "hls playlist naming a local file": ({"audio": {"path": "local.m3u8"}}, "AudioDecodeError"),
        "concat list naming a local file": ({"audio": {"path": "list.ffconcat"}}, "AudioDecodeError"),
    }
    return cases


def test_hostile_jobs_on_the_queue_fail_typed_and_reach_nothing(stack):
    cases = queue_cases(stack)
    assert len(cases) >= 15
    svc, client, worker = stack.service, stack.client, stack.worker
    ids = {name: f"hostile-{i}" for i, name in enumerate(cases)}
    for name, (fields, _) in cases.items():
        client.enqueue({"job_id": ids[name], **fields})
    client.enqueue({"job_id": "hostile-then-jfk", "audio": {"path": JFK}})
    expected = {*ids.values(), "hostile-then-jfk"}
    # The results queue also holds the gateway's jobs (it is the record of every job): ours are picked out.
    every = client.results(lambda rs: expected <= {r.job_id for r in rs}, alive=lambda: worker.wait_for("Consuming"))
    results = [r for r in every if r.job_id in expected]
    by_id = {r.job_id: r for r in results}
    codes = {name: by_id[ids[name]].error.code if by_id[ids[name]].error else None for name in cases}
    assert codes == {name: code for name, (_, code) in cases.items()}
    assert by_id["hostile-then-jfk"].text == stack.jfk_text  # the worker still serves, the same text
    dead = [(p, body) for p, body in client.drain(svc.topology.dead_letter_queue) if p.headers["x-job-id"] in expected]
    assert sorted(p.headers["x-job-id"] for p, _ in dead) == sorted(ids.values())  # each kept once
    LEDGER.forbidden_outbound += len(stack.trap.seen)
    assert stack.trap.seen == [], "a forbidden address (or the model download site) was reached"
    # Secrets in a URL reach neither the result, the dead letter's headers, nor the log.
    secret_id = ids["credentials and token in the URL"]
    (headers,) = [p.headers for p, _ in dead if p.headers["x-job-id"] == secret_id]
    assert "s3cr3t" not in by_id[secret_id].model_dump_json() and "s3cr3t" not in json.dumps(headers, default=str)
    assert "s3cr3t" not in worker.log()
    assert worker.process.poll() is None and client.depth(svc.topology.jobs_queue) == 0
    assert collections.Counter(r.job_id for r in results).most_common(1)[0][1] == 1  # none duplicated
    LEDGER.hostile_queue.extend(cases)
    LEDGER.account({"hostile-then-jfk"}, [r.job_id for r in results if r.status == "completed"])
