"""The interactive lane through the gateway, on real processes (one worker, the broker, the gateway): a
synchronous request goes ahead of the bulk jobs queued and running; a tenant's `lane` moves its requests
to the other lane. What is asserted is the order in which things finish, never a wall time. Also a
tenant's jobs at once (max_concurrent_jobs), and the gateway's /metrics: each tenant's usage."""

import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from conftest import ROOT
from harness import GatewayProcess, Service, gateway_env, new_topology, stop_and_check
from prometheus_client.parser import text_string_to_metric_families

from worker.devtools.local_broker import free_port

JFK = "jfk_inaugural_1961.flac"
LONG = "ljspeech_LJ001-0001_to_0032_concat.wav"  # 231 s: a bulk job of 10 chunks
KEY = "lane-key"  # no lane of its own: synchronous requests interactive, /v1/jobs bulk
BATCH_KEY = "batch-key"  # lane = "bulk": even its synchronous requests wait their turn
DESK_KEY = "desk-key"  # lane = "interactive": its /v1/jobs go ahead too
SINGLE_KEY = "single-key"  # max_concurrent_jobs = 1


@pytest.fixture(scope="module")
def gateway(broker, tmp_path_factory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("lanes")
    service = Service(broker_url=broker, root=root, topology=new_topology())
    service.input_dir.mkdir()
    port = free_port()
    worker = service.start_worker(allowed_url_hosts="127.0.0.1", gateway_port=port, fanout_min_seconds=0)
    batch, desk, single = (hashlib.sha256(k.encode()).hexdigest() for k in (BATCH_KEY, DESK_KEY, SINGLE_KEY))
    (root / "keys.toml").write_text(
        f'[tenants.batch]\nkey_sha256 = ["{batch}"]\nlane = "bulk"\n'
        f'[tenants.desk]\nkey_sha256 = ["{desk}"]\nlane = "interactive"\n'
        f'[tenants.single]\nkey_sha256 = ["{single}"]\nmax_concurrent_jobs = 1\n'
    )
    env = gateway_env(service, port, root, gateway_api_keys=KEY, gateway_keys_file=root / "keys.toml",
                      gateway_metrics_port=free_port())  # fmt: skip
    shutil.copyfile(ROOT.parent / "shared" / "audio" / LONG, root / LONG)
    gw = GatewayProcess(f"http://127.0.0.1:{port}", env, root / "gateway.log", root / "uploads")
    try:
        gw.start()
        worker.wait_for("Consuming")
        yield gw
    finally:
        gw.stop()
        stop_and_check(service)


def submit(gateway: GatewayProcess, name: str, key: str = KEY) -> str:
    path = (
        Path(gateway.env["GATEWAY_UPLOAD_DIR"]).parent / LONG if name == LONG else ROOT.parent / "shared/audio" / name
    )
    with open(path, "rb") as audio:
        response = requests.post(
            f"{gateway.url}/v1/jobs", headers={"authorization": f"Bearer {key}"}, files={"file": audio}, timeout=60
        )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def state(gateway: GatewayProcess, job_id: str, key: str = KEY) -> str:
    response = requests.get(f"{gateway.url}/v1/jobs/{job_id}", headers={"authorization": f"Bearer {key}"}, timeout=10)
    return response.json()["state"]


def wait_until(gateway: GatewayProcess, job_id: str, states: set[str], key: str = KEY, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while (found := state(gateway, job_id, key)) not in states:
        assert time.monotonic() < deadline, f"{job_id} is {found}, not {states}, after {timeout} s"
        time.sleep(0.2)


def transcribe(gateway: GatewayProcess, key: str) -> str:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=600)
    with open(ROOT.parent / "shared" / "audio" / JFK, "rb") as audio:
        return client.audio.transcriptions.create(model="whisper-1", file=audio).text


def test_a_synchronous_request_goes_ahead_of_the_bulk_jobs_queued_and_running(gateway):
    running, queued = submit(gateway, LONG), submit(gateway, LONG)
    wait_until(gateway, running, {"running"})

    text = transcribe(gateway, KEY)

    assert "ask not what your country can do for you" in text.lower()
    assert (state(gateway, running), state(gateway, queued)) == ("running", "queued")
    for job in (running, queued):  # the bulk work was held back, not lost
        wait_until(gateway, job, {"completed"})


def test_a_tenants_lane_moves_its_requests_to_the_other_lane(gateway):
    # lane = "bulk": its synchronous request waits behind the bulk job queued before it
    running, queued = submit(gateway, LONG), submit(gateway, LONG)
    wait_until(gateway, running, {"running"})
    assert "your country" in transcribe(gateway, BATCH_KEY).lower()
    assert state(gateway, queued) == "completed"

    # lane = "interactive": its /v1/jobs goes ahead of the bulk job queued before it
    running, queued = submit(gateway, LONG), submit(gateway, LONG)
    wait_until(gateway, running, {"running"})
    asked = submit(gateway, JFK, key=DESK_KEY)
    wait_until(gateway, asked, {"completed"}, key=DESK_KEY)
    assert state(gateway, queued) == "queued"
    wait_until(gateway, queued, {"completed"})


def test_a_tenants_jobs_at_once_are_bounded_across_replicas_in_openais_shape(gateway, tmp_path):
    first = submit(gateway, LONG, key=SINGLE_KEY)
    with pytest.raises(openai.RateLimitError) as refused:  # its one job is queued or running
        transcribe(gateway, SINGLE_KEY)
    assert refused.value.code == "concurrency_limit_exceeded" and "max_concurrent_jobs" in refused.value.message
    port = free_port()  # a second replica on the same job database
    env = {
        **gateway.env,
        "GATEWAY_PORT": str(port),
        "GATEWAY_RESULTS_QUEUE": f"gateway-results.{port}",
        "GATEWAY_METRICS_PORT": "0",
    }
    replica = GatewayProcess(f"http://127.0.0.1:{port}", env, tmp_path / "replica.log", gateway.upload_dir)
    try:
        replica.start()
        with open(ROOT.parent / "shared" / "audio" / JFK, "rb") as audio:
            response = requests.post(f"{replica.url}/v1/jobs", headers={"authorization": f"Bearer {SINGLE_KEY}"},
                                     files={"file": audio}, timeout=60)  # fmt: skip
    finally:
        replica.stop()
    assert response.status_code == 429 and response.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert "your country" in transcribe(gateway, KEY).lower()  # other tenants are not held back
    wait_until(gateway, first, {"completed"}, key=SINGLE_KEY)
    assert "your country" in transcribe(gateway, SINGLE_KEY).lower()  # its result freed the slot
    assert list(gateway.upload_dir.iterdir()) == []  # refused uploads were not kept


def usage_metrics(gateway: GatewayProcess, tenant: str) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{gateway.env['GATEWAY_METRICS_PORT']}/metrics", timeout=10).text
    assert KEY not in text and BATCH_KEY not in text  # tenants are names or digests, never keys
    found = {"requests": 0.0, "completed": 0.0, "failed": 0.0, "audio_seconds": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("tenant") != tenant or not sample.name.endswith("_total"):
                continue
            if sample.name == "transcription_gateway_requests_total":
                found["requests"] = sample.value
            elif sample.name == "transcription_gateway_jobs_total":
                found[sample.labels["status"]] = sample.value
            elif sample.name == "transcription_gateway_audio_seconds_total":
                found["audio_seconds"] = sample.value
    return found


def test_each_tenants_usage_is_on_the_gateways_metrics(gateway):
    before = usage_metrics(gateway, "batch")
    assert "your country" in transcribe(gateway, BATCH_KEY).lower()
    after = usage_metrics(gateway, "batch")
    assert after["requests"] - before["requests"] == 1
    assert (after["completed"] - before["completed"], after["failed"] - before["failed"]) == (1, 0)
    assert abs(after["audio_seconds"] - before["audio_seconds"] - 11.0) < 0.5
    assert usage_metrics(gateway, "nobody") == {"requests": 0, "completed": 0, "failed": 0, "audio_seconds": 0}
