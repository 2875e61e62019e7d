"""The gateway as its users meet it: the official `openai` client and curl against `cmd/gateway/main.py`,
with a real worker process behind a real rabbitmq-server (everything on 127.0.0.1)."""

import base64
import concurrent.futures
import functools
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
import soundfile
from conftest import ROOT
from harness import GatewayProcess, Service, gateway_env, new_topology, stop_and_check

from worker.devtools import known_speakers
from worker.devtools.conversations import write
from worker.devtools.local_broker import free_port
from worker.media.audio import decode_audio, write_wav

JFK = "jfk_inaugural_1961.flac"
LONG = "ljspeech_LJ001-0001_to_0032_concat.wav"  # 231 s: 10 chunks, progress to watch
KEY = "test-key-1"
OTHER_KEY = "test-key-2"  # another team's
TEAM_KEYS = ("team-key-old", "team-key-new")  # one tenant of GATEWAY_KEYS_FILE, its key being rotated
LIMITED_KEY, PER_MINUTE = "limited-key", 3  # a tenant with requests_per_minute
METERED_KEY, SMALL_KEY = "metered-key", "small-key"  # tenants with audio_seconds_per_day: 12 and 5
NARROW_KEY = "narrow-key"  # a tenant whose allowed_models the workers do not have
MAX_UPLOAD = 64 * 2**20


@pytest.fixture(scope="module")
def file_server() -> Iterator[str]:
    """../shared/audio over HTTP on 127.0.0.1: the workers allow exactly its origin (ALLOWED_PRIVATE_ORIGINS)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT.parent / "shared" / "audio"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(broker, tmp_path_factory, file_server) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("gateway")
    service = Service(broker_url=broker, root=root, topology=new_topology())
    service.input_dir.mkdir()
    port, uploads = free_port(), root / "uploads"
    # The workers allow the gateway's origin (GATEWAY_PORT, as `make run` shares it) and the file server's, no more.
    workers = [
        service.start_worker(
            allowed_url_hosts="127.0.0.1",
            gateway_port=port,
            allowed_private_origins=file_server,
            max_parallel_workers=1,
        )
        for _ in range(2)
    ]
    digests = ", ".join(f'"{hashlib.sha256(k.encode()).hexdigest()}"' for k in TEAM_KEYS)
    limited, metered, small, narrow = (
        hashlib.sha256(k.encode()).hexdigest() for k in (LIMITED_KEY, METERED_KEY, SMALL_KEY, NARROW_KEY)
    )
    (root / "keys.toml").write_text(
        f"[tenants.team]\nkey_sha256 = [{digests}]\n"
        f'[tenants.limited]\nkey_sha256 = ["{limited}"]\nrequests_per_minute = {PER_MINUTE}\n'
        f'[tenants.metered]\nkey_sha256 = ["{metered}"]\naudio_seconds_per_day = 12\n'
        f'[tenants.small]\nkey_sha256 = ["{small}"]\naudio_seconds_per_day = 5\n'
        f'[tenants.narrow]\nkey_sha256 = ["{narrow}"]\nallowed_models = ["large-v3"]\n'
    )
    # The gateway checks job URLs against the workers' policy (egress settings alike), the workers again.
    env = gateway_env(service, port, root, gateway_api_keys=f"{KEY},{OTHER_KEY}", gateway_max_upload_bytes=MAX_UPLOAD,
                      gateway_keys_file=root / "keys.toml", allowed_url_hosts="127.0.0.1",
                      allowed_private_origins=file_server)  # fmt: skip
    shutil.copyfile(ROOT.parent / "shared" / "audio" / LONG, root / LONG)
    gw = GatewayProcess(f"http://127.0.0.1:{port}", env, root / "gateway.log", uploads)
    try:
        gw.start()
        for worker in workers:
            worker.wait_for("Consuming")
        yield gw
    finally:  # also when start-up failed: no process outlives the module
        gw.stop()
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
    for segment in verbose.segments:  # OpenAI's segment fields, filled from whisper.cpp's token data
        assert segment.tokens and all(isinstance(t, int) for t in segment.tokens)
        assert -3.0 < segment.avg_logprob < 0 and 0 <= segment.no_speech_prob < 0.5 and segment.compression_ratio > 0
    assert verbose.words is None  # only for the word granularity
    assert list(gateway.upload_dir.iterdir()) == []  # each upload deleted when its job ended


def test_word_timestamps_through_the_openai_client_and_curl(client, gateway, audio_dir):
    with open(audio_dir / JFK, "rb") as audio:
        both = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
        audio.seek(0)
        words_only = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", timestamp_granularities=["word"]
        )
    words = both.words
    assert " ".join(w.word for w in words) == both.text.replace("  ", " ")
    assert [w.word for w in words][:5] == ["And", "so", "my", "fellow", "Americans"]
    assert all(0 <= w.start <= w.end <= both.duration + 0.01 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words) and both.segments
    assert words_only.segments is None and [w.word for w in words_only.words] == [w.word for w in words]
    status, body = curl(
        gateway, f"file=@{audio_dir / JFK}", "response_format=verbose_json", "timestamp_granularities[]=word"
    )
    assert status == 200 and [w["word"] for w in body["words"]] == [w.word for w in words]
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "timestamp_granularities[]=letter")
    assert status == 400 and "timestamp_granularities" in body["error"]["message"]


def cue_lines(subtitles: str) -> list[list[str]]:
    """Each srt cue's text lines (its number and times left out)."""
    return [cue.split("\n")[2:] for cue in subtitles.strip().split("\n\n")]


def test_readable_subtitles_wrap_lines_split_cues_and_highlight_words(client, gateway, audio_dir):
    with open(audio_dir / JFK, "rb") as audio:
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
        audio.seek(0)
        readable = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="srt", extra_body={"max_line_width": 16, "max_line_count": 2}
        )
    cues = cue_lines(readable)
    assert all(len(line) <= 16 for lines in cues for line in lines) and all(len(lines) <= 2 for lines in cues)
    assert len(cues) > len(cue_lines(plain))  # segments too long for two lines went on in new cues
    words = [w for lines in cues for line in lines for w in line.split()]
    assert words == [w for lines in cue_lines(plain) for line in lines for w in line.split()]  # the same text
    starts = [line.split(" --> ")[0] for line in readable.splitlines() if " --> " in line]
    assert starts == sorted(starts)
    status, vtt = curl(gateway, f"file=@{audio_dir / JFK}", "response_format=vtt", "highlight_words=true")
    highlighted = [cue for cue in vtt.split("\n\n") if "<u>" in cue]
    assert status == 200 and vtt.startswith("WEBVTT") and len(highlighted) >= 20  # a cue per word said
    for field in ("max_line_count=2", "max_line_width=0", "max_line_width=wide", "highlight_words=maybe"):
        status, body = curl(gateway, f"file=@{audio_dir / JFK}", "response_format=srt", field)
        assert (status, body["error"]["code"]) == (400, "invalid_field"), field
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "max_line_width=42")  # json: no cues to lay out
    assert status == 400 and "response_format srt or vtt" in body["error"]["message"]


def test_a_prompt_reaches_every_chunk_and_the_temperature_is_echoed(client, gateway):
    # The 231 s recording's Gutenberg (LJ001-0010) is misspelt without a prompt; each chunk gets the prompt.
    with open(Path(gateway.env["GATEWAY_UPLOAD_DIR"]).parent / LONG, "rb") as audio:
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
        audio.seek(0)
        prompted = client.audio.transcriptions.create(
            model="whisper-1", file=audio, prompt="The Gutenberg Bible.", response_format="verbose_json"
        )
        audio.seek(0)
        warm = client.audio.transcriptions.create(
            model="whisper-1", file=audio, temperature=0.4, response_format="verbose_json"
        )
    assert "Gutenberg" not in plain.text and "Gutenberg" in prompted.text
    assert {s.temperature for s in warm.segments} == {0.4} and "printing" in warm.text.lower()


STRICT_VAD = {"type": "server_vad", "threshold": 0.999, "prefix_padding_ms": 0, "silence_duration_ms": 0}


def test_chunking_strategy_reaches_the_workers_speech_detection(client, gateway, audio_dir):
    def transcribe(**fields) -> str:
        with open(audio_dir / JFK, "rb") as audio:
            return client.audio.transcriptions.create(model="whisper-1", file=audio, **fields).text

    default, auto, strict = transcribe(), transcribe(chunking_strategy="auto"), transcribe(chunking_strategy=STRICT_VAD)
    # The workers' CHUNKING is vad: "auto" is their default. A strict server_vad keeps only the surest
    # speech: JFK's quieter opening words are left out (sent as chunking_strategy[type]=... form fields).
    assert auto == default and "fellow Americans" in default
    assert "fellow" not in strict and "your country" in strict
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", f"chunking_strategy={json.dumps(STRICT_VAD)}")
    assert status == 200 and body["text"] == strict  # curl users may send the object as JSON text
    for bad in ("manual", '{"type": "server_vad", "threshold": 2}', '{"type": "client_vad"}', "{not json"):
        status, body = curl(gateway, f"file=@{audio_dir / JFK}", f"chunking_strategy={bad}")
        assert status == 400 and body["error"]["code"] == "invalid_field", bad
        assert "chunking_strategy" in body["error"]["message"], bad


def stereo_call(audio_dir: Path, path: Path) -> Path:
    """JFK on the left channel, then a LibriSpeech reader on the right (each 20 dB down on the other)."""
    left, right = decode_audio(audio_dir / JFK), decode_audio(audio_dir / "ls_test-clean_1089-134686-0000.flac")
    a = np.concatenate([left, np.zeros(right.size + 16000, np.float32)])
    b = np.concatenate([np.zeros(left.size + 16000, np.float32), right])
    soundfile.write(path, np.stack([a + 0.1 * b, b + 0.1 * a], axis=1), 16000, subtype="PCM_16")
    return path


def test_diarized_json_through_the_openai_client_and_curl(client, gateway, audio_dir, tmp_path):
    call = stereo_call(audio_dir, tmp_path / "call.wav")
    with open(call, "rb") as audio:
        diarized = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="diarized_json", extra_body={"diarize": "channels"}
        )
        audio.seek(0)
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", extra_body={"diarize": "channels"}
        )
    assert [s.speaker for s in diarized.segments][0] == "A" and {s.speaker for s in diarized.segments} == {"A", "B"}
    assert all(s.type == "transcript.text.segment" for s in diarized.segments)
    assert "fellow Americans" in " ".join(s.text for s in diarized.segments if s.speaker == "A")
    assert "stew for dinner" in " ".join(s.text for s in diarized.segments if s.speaker == "B")
    assert [s.speaker for s in verbose.segments] == [s.speaker for s in diarized.segments]
    status, body = curl(gateway, f"file=@{call}", "diarize=channels", "response_format=diarized_json")
    assert status == 200 and [s["speaker"] for s in body["segments"]] == [s.speaker for s in diarized.segments]
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "diarize=channels")  # one sound on both channels
    assert status == 400 and body["error"]["code"] == "SingleChannel"
    status, body = curl(gateway, f"file=@{call}", "diarize=channels", "num_speakers=2")
    assert status == 400 and "num_speakers" in body["error"]["message"]
    status, body = curl(gateway, f"file=@{call}", "diarize=everyone")
    assert status == 400 and body["error"]["code"] == "invalid_field"


def streamed(client: openai.OpenAI, path: Path, **fields) -> list:
    with open(path, "rb") as audio:
        return list(client.audio.transcriptions.create(model="whisper-1", file=audio, stream=True, **fields))


def test_a_streamed_transcription_sends_its_chunks_in_order_then_the_whole_text(client, gateway):
    long = Path(gateway.env["GATEWAY_UPLOAD_DIR"]).parent / LONG
    events = streamed(client, long)
    with open(long, "rb") as audio:
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events] == ["transcript.text.delta"] * len(deltas) + ["transcript.text.done"]
    # One delta per chunk (12), sent as its turn came; none made up from the result at the end.
    assert len(deltas) >= 10 and all(d.segment_id is None for d in deltas)
    assert "".join(d.delta for d in deltas) == events[-1].text == plain.text
    assert plain.usage.type == "duration" and abs(plain.usage.seconds - 231.0) < 0.5


def test_a_streamed_diarized_transcription_sends_each_speakers_segments(client, audio_dir, tmp_path):
    events = streamed(client, stereo_call(audio_dir, tmp_path / "call.wav"), response_format="diarized_json",
                      extra_body={"diarize": "channels"})  # fmt: skip
    segments = [e for e in events if e.type == "transcript.text.segment"]
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert {s.speaker for s in segments} == {"A", "B"} and events[-1].type == "transcript.text.done"
    assert [d.segment_id for d in deltas] == [s.id for s in segments if s.text]
    assert "".join(d.delta for d in deltas) == events[-1].text == " ".join(s.text for s in segments if s.text)


def test_a_stream_is_server_sent_events_and_formats_it_cannot_stream_are_refused(gateway, client, audio_dir):
    answer = subprocess.run(
        ["curl", "-sS", "-N", "-H", f"Authorization: Bearer {KEY}", "-H", "Expect:", "-F", f"file=@{audio_dir / JFK}",
         "-F", "stream=true", "-D", "-", f"{gateway.url}/v1/audio/transcriptions"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    head, _, body = answer.partition("\n\n")  # text mode: CRLF read as LF
    assert "content-type: text/event-stream" in head.lower()
    lines = [line for line in body.splitlines() if line and not line.startswith(":")]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    done = json.loads(lines[-2][len("data: ") :])
    assert done["type"] == "transcript.text.done" and "your country" in done["text"]
    for fields in ({"response_format": "srt"}, {"response_format": "verbose_json"}):
        with pytest.raises(openai.BadRequestError, match="not streamed"):
            streamed(client, audio_dir / JFK, **fields)
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "stream=maybe")
    assert status == 400 and body["error"]["code"] == "invalid_field"
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "timestamp_granularities[]=word")  # json: OpenAI's 400
    assert status == 400 and "verbose_json" in body["error"]["message"]


def test_token_logprobs_when_asked_for(client, gateway, audio_dir):
    with open(audio_dir / JFK, "rb") as audio:
        asked = client.audio.transcriptions.create(model="whisper-1", file=audio, include=["logprobs"])
        audio.seek(0)
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert plain.logprobs is None and asked.text == plain.text
    tokens = asked.logprobs
    assert len(tokens) > 20 and all(t.logprob <= 0 for t in tokens) and min(t.logprob for t in tokens) < -0.01
    assert all(bytes(map(int, t.bytes)).decode(errors="replace") == t.token for t in tokens)  # the client has floats
    assert bytes(int(b) for t in tokens for b in t.bytes).decode().strip() == asked.text  # every text token, in order
    events = streamed(client, audio_dir / JFK, include=["logprobs"])
    done, deltas = events[-1], events[:-1]
    assert done.type == "transcript.text.done" and [t.token for t in done.logprobs] == [t.token for t in tokens]
    assert [t.token for d in deltas for t in d.logprobs] == [t.token for t in tokens]  # each delta its tokens'
    assert all(d.logprobs is None for d in streamed(client, audio_dir / JFK)[:-1])
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "include[]=everything")
    assert status == 400 and body["error"]["code"] == "invalid_field"


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


def curl(gateway: GatewayProcess, *fields: str, key: str | None = KEY, path: str = "/v1/audio/transcriptions"):
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
        "prompt too long": ((jfk, "prompt=" + "x" * 2001), 400, "invalid_field"),
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


# --- async jobs: /v1/jobs, SSE progress, records in the database ---


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse_events(url: str, timeout: float = 300) -> list[tuple[str, dict]]:
    """(event, data) pairs of a Server-Sent Events stream, read until the server ends it."""
    events, name = [], None
    with requests.get(url, headers=auth(), stream=True, timeout=timeout) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def wait_for_state(
    gateway: GatewayProcess, job_id: str, states: set[str], timeout: float = 300, key: str = KEY
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = requests.get(f"{gateway.url}/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
        if record["state"] in states:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.2)


def test_an_async_upload_job_streams_its_progress_and_completes(gateway):
    with open(Path(gateway.env["GATEWAY_UPLOAD_DIR"]).parent / LONG, "rb") as audio:
        response = requests.post(
            f"{gateway.url}/v1/jobs", headers=auth(), files={"file": audio}, data={"model": "whisper-1"}
        )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and response.headers["location"] == f"/v1/jobs/{job['id']}"

    events = sse_events(f"{gateway.url}/v1/jobs/{job['id']}/events")
    names = [name for name, _ in events]
    assert names[0] == "state" and names[-1] == "completed"
    done = [data["chunks_done"] for name, data in events if name == "progress" and data["stage"] == "transcribing"]
    assert done == sorted(done) and done and done[-1] == events[-1][1]["result"]["chunks"]
    record = requests.get(f"{gateway.url}/v1/jobs/{job['id']}", headers=auth(), timeout=10).json()
    assert record["state"] == "completed" and record["progress"]["percent"] == 100.0
    assert "printing" in record["result"]["text"].lower() and record["result"]["duration_seconds"] > 230
    assert list(gateway.upload_dir.iterdir()) == []


def test_a_job_is_seen_only_by_the_key_that_made_it(gateway, file_server):
    response = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), json={"url": f"{file_server}/{JFK}"}, timeout=10)
    job_id = response.json()["id"]
    wait_for_state(gateway, job_id, {"completed"})
    routes = [f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events"]
    for route in routes:  # owner, another tenant, no key, a wrong key
        answers = [requests.get(f"{gateway.url}{route}", headers=headers, timeout=10) for headers in
                   (auth(), auth(OTHER_KEY), {}, auth("not-a-key"))]  # fmt: skip
        assert [a.status_code for a in answers] == [200, 404, 401, 401], route
        # Another tenant learns nothing: its 404 is the one for a job that does not exist.
        missing = requests.get(f"{gateway.url}/v1/jobs/gw-none", headers=auth(OTHER_KEY), timeout=10).json()
        assert answers[1].json()["error"]["code"] == missing["error"]["code"] == "not_found"
    assert KEY not in gateway.log() and OTHER_KEY not in gateway.log()  # logs hold no key


def test_a_tenants_requests_per_minute_hold_across_two_gateway_replicas(gateway, tmp_path):
    port = free_port()
    env = {**gateway.env, "GATEWAY_PORT": str(port), "GATEWAY_RESULTS_QUEUE": f"gateway-results.{port}"}
    replica = GatewayProcess(f"http://127.0.0.1:{port}", env, tmp_path / "replica.log", gateway.upload_dir)
    replica.start()  # the same database: the same counts
    try:
        if time.time() % 60 > 50:  # the counts are per minute: all of this inside one
            time.sleep(61 - time.time() % 60)
        answers = [
            requests.get(f"{url}/v1/models", headers=auth(LIMITED_KEY), timeout=10)
            for url in (gateway.url, replica.url, gateway.url, replica.url)
        ]
        unlimited = requests.get(f"{replica.url}/v1/models", headers=auth(), timeout=10)
    finally:
        replica.stop()
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == str(PER_MINUTE) for a in answers)
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and 1 <= int(refused.headers["retry-after"]) <= 60
    with pytest.raises(openai.RateLimitError):  # what OpenAI's client makes of it
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=LIMITED_KEY, max_retries=0).models.list()
    assert unlimited.status_code == 200 and "x-ratelimit-limit-requests" not in unlimited.headers


def test_a_tenant_of_the_keys_file_sees_its_jobs_with_any_of_its_keys(gateway, file_server):
    old, new = TEAM_KEYS
    job = {"url": f"{file_server}/{JFK}"}
    job_id = requests.post(f"{gateway.url}/v1/jobs", headers=auth(old), json=job, timeout=10).json()["id"]
    answers = [requests.get(f"{gateway.url}/v1/jobs/{job_id}", headers=auth(k), timeout=10) for k in (old, new, KEY)]
    assert [a.status_code for a in answers] == [200, 200, 404]  # the key rotated, the jobs kept; no one else


def openai_of(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=120)


def usage_today(gateway: GatewayProcess, key: str) -> dict:
    answer = requests.get(f"{gateway.url}/v1/usage", headers=auth(key), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"][-1]


def test_a_tenant_sees_and_uses_only_its_allowed_models(gateway, audio_dir):
    everyone = [m.id for m in openai_of(gateway, KEY).models.list()]
    assert "whisper-1" in everyone and [m.id for m in openai_of(gateway, NARROW_KEY).models.list()] == []
    with open(audio_dir / JFK, "rb") as audio, pytest.raises(openai.BadRequestError) as refused:
        openai_of(gateway, NARROW_KEY).audio.transcriptions.create(model="whisper-1", file=audio)
    assert refused.value.code == "model_not_found"
    job = {"url": "http://127.0.0.1/a.wav", "model": everyone[-1]}
    answer = requests.post(f"{gateway.url}/v1/jobs", headers=auth(NARROW_KEY), json=job, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "model_not_found"


def test_a_tenants_audio_quota_counts_decoded_seconds_and_refuses_in_openais_shape(gateway, audio_dir, file_server):
    small = openai_of(gateway, SMALL_KEY)
    with open(audio_dir / JFK, "rb") as audio, pytest.raises(openai.RateLimitError) as refused:
        small.audio.transcriptions.create(model="whisper-1", file=audio)  # 11 s of 5 s left: the worker refuses
    assert refused.value.code == "insufficient_quota" and "quota" in refused.value.message
    short = "ls_test-clean_1089-134691-0000.flac"  # 2.1 s
    with open(audio_dir / short, "rb") as audio:
        assert small.audio.transcriptions.create(model="whisper-1", file=audio).text
    job = requests.post(f"{gateway.url}/v1/jobs", headers=auth(SMALL_KEY), json={"url": f"{file_server}/{JFK}"},
                        timeout=10).json()  # fmt: skip
    record = wait_for_state(gateway, job["id"], {"completed", "failed"}, key=SMALL_KEY)
    assert record["state"] == "failed" and record["result"]["error"]["code"] == "QuotaExceeded"
    used = usage_today(gateway, SMALL_KEY)
    assert (used["jobs"], used["jobs_failed"]) == (3, 2) and abs(used["audio_seconds"] - 2.08) < 0.1
    assert used["requests"] >= 4  # 3 jobs, 1 usage, more counted by the time it answers

    # Two requests at once each see the 12 s left, and both run (documented: together they may go over).
    metered = openai_of(gateway, METERED_KEY)

    def transcribe(_: int) -> str:
        with open(audio_dir / JFK, "rb") as audio:
            return metered.audio.transcriptions.create(model="whisper-1", file=audio).text

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        assert all("your country" in text.lower() for text in pool.map(transcribe, range(2)))
    assert abs(usage_today(gateway, METERED_KEY)["audio_seconds"] - 22.0) < 0.2
    with pytest.raises(openai.RateLimitError) as refused:  # nothing left: refused before any upload is kept
        transcribe(0)
    assert refused.value.code == "insufficient_quota" and list(gateway.upload_dir.iterdir()) == []
    assert usage_today(gateway, KEY)["audio_seconds"] != usage_today(gateway, METERED_KEY)["audio_seconds"]


def test_an_async_url_job_and_bad_job_requests(gateway, file_server):
    job = {"url": f"{file_server}/{JFK}", "word_timestamps": True, "prompt": "Kennedy."}
    response = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), json=job, timeout=10)
    assert response.status_code == 202, response.text
    record = wait_for_state(gateway, response.json()["id"], {"completed", "failed"})
    assert record["state"] == "completed" and "your country" in record["result"]["text"].lower()
    assert [w["word"].strip() for w in record["result"]["segments"][0]["words"]][:2] == ["And", "so"]
    bad = {
        "no such job": ("get", "/v1/jobs/gw-nope", None, 404),
        "url not http": ("post", "/v1/jobs", {"url": "file:///etc/passwd"}, 400),
        "unknown field": ("post", "/v1/jobs", {"url": "http://127.0.0.1/a.wav", "speed": 2}, 400),
        "unknown model": ("post", "/v1/jobs", {"url": "http://127.0.0.1/a.wav", "model": "nope"}, 400),
        "not JSON": ("post", "/v1/jobs", "{", 400),
    }
    for name, (method, path, body, status) in bad.items():
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        response = requests.request(method, f"{gateway.url}{path}", headers=auth(), timeout=10, **kwargs)
        assert response.status_code == status, name
        assert response.json()["error"]["message"], name
    no_file = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), files={"model": (None, "whisper-1")}, timeout=10)
    assert no_file.status_code == 400
    assert requests.get(f"{gateway.url}/v1/jobs/x", timeout=10).status_code == 401


def test_an_async_job_names_a_known_speaker_by_a_clip_at_a_url(gateway, file_server):
    # LJ Speech's reader, named by another of her recordings, fetched by the worker under its URL rules.
    job = {"url": f"{file_server}/ljspeech_LJ001-0009.flac", "diarize": "speakers", "languages": ["en"],
           "known_speaker_names": ["Linda"], "known_speaker_references": [f"{file_server}/ljspeech_LJ050-0131.wav"]}  # fmt: skip
    response = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), json=job, timeout=10)
    assert response.status_code == 202, response.text
    record = wait_for_state(gateway, response.json()["id"], {"completed", "failed"})
    assert record["state"] == "completed", record
    assert {s["speaker"] for s in record["result"]["segments"]} == {"Linda"}
    refused = {**job, "diarize": "off"}
    response = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), json=refused, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_known_speakers"
    response = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), json={**job, "languages": ["xx"]}, timeout=10)
    assert response.status_code == 400 and "xx" in response.json()["error"]["message"]
    # A callback or a speaker's clip the workers may not reach: refused by the gateway at once (their URL rules).
    for private in ({"url": job["url"], "callback_url": "http://10.1.2.3/hook"},
                    {**job, "known_speaker_references": ["http://10.1.2.3/linda.wav"]}):  # fmt: skip
        response = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), json=private, timeout=10)
        assert response.status_code == 400 and response.json()["error"]["code"] == "InputNotAllowed", response.text


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's packages
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def browser() -> Iterator:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_the_web_page_uploads_shows_progress_and_the_transcript(gateway, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{gateway.url}/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Transcribe audio"
    browser.find_element(By.ID, "key").send_keys(KEY + "\t")  # leaving the field loads the model list
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) > 1)
    browser.find_element(By.ID, "file").send_keys(str(Path(gateway.env["GATEWAY_UPLOAD_DIR"]).parent / LONG))
    # Every text the live line shows is recorded by the page itself: chunks may come faster than polling.
    browser.execute_script(
        "window.shown = []; new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach("
        "(n) => window.shown.push(n.textContent)))).observe(document.getElementById('live'), {childList: true});"
    )
    browser.find_element(By.ID, "start").click()

    seen, deadline = set(), time.monotonic() + 300
    while browser.find_element(By.ID, "status").text != "Done.":
        assert not browser.find_element(By.ID, "error").text, browser.find_element(By.ID, "error").text
        seen.add(float(browser.find_element(By.ID, "progress").get_attribute("value")))
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert any(0 < value < 100 for value in seen), seen  # the bar moved with the chunks, not only at the end
    # The text showed as its chunks came, in chunk order: each time a longer start of the transcript's text
    # (which then took its place; the last chunks' may come after the result, and never show).
    shown = [text.split() for text in browser.execute_script("return window.shown") if text]
    final = re.sub(r"\d\d:\d\d:\d\d", " ", browser.find_element(By.ID, "segments").text).split()
    assert shown and all(final[: len(words)] == words for words in shown), [" ".join(w[:8]) for w in shown]
    assert [len(words) for words in shown] == sorted(len(words) for words in shown)
    rows = browser.find_elements(By.CSS_SELECTOR, "#segments li")
    assert len(rows) > 10 and rows[0].find_element(By.TAG_NAME, "time").text == "00:00:00"
    assert "printing" in browser.find_element(By.ID, "segments").text.lower()
    for fmt in ("txt", "srt", "vtt", "json"):
        assert browser.find_element(By.ID, f"dl-{fmt}").get_attribute("href").startswith("blob:")
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "gateway-page.png"))


def test_the_web_page_shows_each_speaker_in_its_colour(gateway, browser, audio_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    call = stereo_call(audio_dir, tmp_path / "call.wav")
    browser.get(f"{gateway.url}/")
    browser.find_element(By.ID, "key").clear()
    browser.find_element(By.ID, "key").send_keys(KEY + "\t")
    Select(browser.find_element(By.ID, "diarize")).select_by_value("channels")
    browser.find_element(By.ID, "file").send_keys(str(call))
    browser.find_element(By.ID, "start").click()
    WebDriverWait(browser, 300).until(
        lambda d: d.find_element(By.ID, "status").text == "Done." or d.find_element(By.ID, "error").text
    )
    assert not browser.find_element(By.ID, "error").text
    labels = browser.find_elements(By.CSS_SELECTOR, "#segments li .who")
    assert [label.text for label in labels][0] == "A" and {label.text for label in labels} == {"A", "B"}
    colours = {label.text: label.value_of_css_property("background-color") for label in labels}
    assert colours["A"] != colours["B"]  # each speaker in its own colour
    assert "fellow Americans" in browser.find_element(By.ID, "segments").text


def test_a_gateway_restart_mid_job_loses_neither_the_job_nor_its_record(gateway):
    with open(Path(gateway.env["GATEWAY_UPLOAD_DIR"]).parent / LONG, "rb") as audio:
        job = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), files={"file": audio}, timeout=30).json()
    deadline = time.monotonic() + 120
    while wait_for_state(gateway, job["id"], {"running"})["progress"]["chunks_total"] == 0:  # not transcribing yet
        assert time.monotonic() < deadline
        time.sleep(0.1)
    gateway.process.kill()
    gateway.process.wait(30)
    gateway.start()  # same database, same uploads, same port

    record = wait_for_state(gateway, job["id"], {"completed", "failed"})
    assert record["state"] == "completed" and record["result"]["duration_seconds"] > 230
    assert record["created_at"] == job["created_at"]
    # The record is written before the upload is deleted: give the deletion a moment.
    deadline = time.monotonic() + 10
    while list(gateway.upload_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(gateway.upload_dir.iterdir()) == []


def test_broker_down_is_503_and_no_result_in_time_is_504(broker, tmp_path, audio_dir):
    """A gateway whose broker is gone, and one whose jobs nobody takes (no worker on its queue)."""
    service = Service(broker_url=broker, root=tmp_path, topology=new_topology())
    dead_broker = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    for name, overrides, status, code in (
        ("no broker", {"amqp_url": dead_broker}, 503, "broker_unavailable"),
        ("no worker", {"gateway_result_timeout_seconds": 2}, 504, "timeout"),
    ):
        port = free_port()
        env = gateway_env(service, port, tmp_path / name, **overrides)
        with open(tmp_path / f"{name}.log", "wb") as log:
            process = subprocess.Popen([sys.executable, "cmd/gateway/main.py"], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while code == "timeout" and "Publishing to" not in (tmp_path / f"{name}.log").read_text():
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
            while True:
                try:
                    got, body = curl(
                        GatewayProcess(f"http://127.0.0.1:{port}", env, tmp_path, tmp_path),
                        f"file=@{audio_dir / JFK}",
                        key=None,
                    )
                    break
                except (subprocess.CalledProcessError, json.JSONDecodeError):  # not listening yet
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.2)
            assert (got, body["error"]["code"]) == (status, code), (name, body)
            if code == "timeout":
                assert "gw-" in body["error"]["message"]  # the job id, to find its result later
            else:
                assert list((tmp_path / name / "uploads").iterdir()) == []
        finally:
            process.terminate()
            process.wait(30)


def test_a_url_job_for_this_machine_is_refused_without_a_request(gateway, file_server):
    # Given a server on loopback the workers were not told about (as their own /metrics would be)
    seen: list[str] = []

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = {"url": f"http://127.0.0.1:{server.server_address[1]}/metrics"}
        response = requests.post(f"{gateway.url}/v1/jobs", headers=auth(), json=job, timeout=10)
    finally:
        server.shutdown()
        server.server_close()

    # Refused by the gateway at once, with the workers' code and reason (no job made), and never requested.
    assert response.status_code == 400 and response.json()["error"]["code"] == "InputNotAllowed", response.text
    assert "loopback" in response.json()["error"]["message"] and seen == []


def data_url(samples: np.ndarray, path: Path) -> str:
    soundfile.write(path, samples, 16000, subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


def test_known_speakers_are_named_by_their_clips(client, gateway, audio_dir, tmp_path):
    """Three voices, two named by clips of their own that the conversation does not hold, plus the clip of
    somebody who is not there (worker/devtools/known_speakers.py): OpenAI's fields through its client."""
    case = known_speakers.first_set(audio_dir)[0]
    names = list(case.known)
    references = [data_url(clip, tmp_path / f"{name}.wav") for name, clip in case.known.items()]
    with open(write(case.conversation, tmp_path / "talk.wav"), "rb") as audio:
        answer = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=audio, response_format="diarized_json", chunking_strategy="auto",
            known_speaker_names=names, known_speaker_references=references,
        )  # fmt: skip
    labels = {s.speaker for s in answer.segments}
    assert labels == {*(set(names) & set(case.conversation.speakers)), "A"}, labels  # the unnamed voice: A
    assert known_speakers.score(case, [(s.start, s.end, s.speaker) for s in answer.segments]) >= 0.9
    assert list(gateway.upload_dir.iterdir()) == []  # the clips went with the audio


def test_known_speakers_that_cannot_be_used_are_refused(gateway, audio_dir, tmp_path):
    speech = decode_audio(audio_dir / JFK)
    (tmp_path / "clip.txt").write_text(data_url(speech[: 4 * 16000], tmp_path / "clip.wav"))
    (tmp_path / "short.txt").write_text(data_url(speech[:16000], tmp_path / "short.wav"))
    clip = f"<{tmp_path / 'clip.txt'}"  # curl -F name=<file: the field's value read from the file as it is

    def literally(value: str) -> str:  # curl -F would take a value's ";type=..." as its own option
        path = tmp_path / f"value-{len(list(tmp_path.iterdir()))}.txt"
        path.write_text(value)
        return f"<{path}"

    jfk = f"file=@{audio_dir / JFK}"
    diarized = "response_format=diarized_json"
    cases = {
        "invalid_known_speakers": [
            (jfk, diarized, "known_speaker_names[]=Ann"),  # a name without a clip
            (jfk, "known_speaker_names[]=Ann", f"known_speaker_references[]={clip}"),  # not diarized
            (jfk, diarized, *(f"known_speaker_names[]=n{k}" for k in range(5)),
             *(f"known_speaker_references[]={clip}" for _ in range(5))),  # more than 4
            (jfk, diarized, "known_speaker_names[]=Ann", "known_speaker_references[]=http://127.0.0.1/ann.wav"),
            (jfk, diarized, "known_speaker_names[]=Ann", f"known_speaker_references[]={literally('data:text/plain;base64,aGk=')}"),
            (jfk, diarized, "known_speaker_names[]=Ann", f"known_speaker_references[]={literally('data:audio/wav;base64,@@')}"),
        ],
        "InvalidReference": [  # checked by the worker, which decodes the clip
            (jfk, diarized, "known_speaker_names[]=Ann",
             f"known_speaker_references[]=<{tmp_path / 'short.txt'}"),
            (jfk, diarized, "known_speaker_names[]=Ann",
             "known_speaker_references[]="
             + literally("data:audio/wav;base64," + base64.b64encode(b"not audio" * 500).decode())),
        ],
    }  # fmt: skip
    for code, requests_ in cases.items():
        for fields in requests_:
            status, body = curl(gateway, *fields)
            assert (status, body["error"]["code"]) == (400, code), (fields[1:], body)
    time.sleep(0.5)
    assert list(gateway.upload_dir.iterdir()) == []  # nothing left behind


def test_languages_limit_detection_and_keywords_reach_every_chunk(client, gateway, audio_dir):
    with open(audio_dir / JFK, "rb") as audio:
        free = client.audio.transcriptions.create(model="base", file=audio, response_format="verbose_json")
        audio.seek(0)
        among = client.audio.transcriptions.create(
            model="base", file=audio, response_format="verbose_json", languages=["de", "fr"]
        )
    assert free.language == "en" and 0.5 < free.model_extra["language_probability"] <= 1.0
    assert among.language in ("de", "fr") and 0.5 <= among.model_extra["language_probability"] < 1.0
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "languages[]=klingon")
    assert status == 400 and "klingon" in body["error"]["message"]
    status, body = curl(gateway, f"file=@{audio_dir / JFK}", "language=en", "languages[]=de")
    assert status == 400 and "not both" in body["error"]["message"]
    # The 231 s recording's Gutenberg is misspelt without help (the prompt test); a keyword spells it.
    with open(Path(gateway.env["GATEWAY_UPLOAD_DIR"]).parent / LONG, "rb") as audio:
        spelt = client.audio.transcriptions.create(model="whisper-1", file=audio, keywords=["Gutenberg"])
    assert spelt.text.count("Gutenberg") >= 1
