"""The gateway's state when the broker goes: a real gateway process on a rabbitmq-server of its own that the test
stops. A request waiting for its result gets 503 at once (not at GATEWAY_RESULT_TIMEOUT_SECONDS), an async job
whose publish fails leaves a failed record (never one "queued" forever), and a gateway that anyone could reach
without a key refuses to start."""

import sqlite3
import subprocess
import sys
import threading
import time

import requests
from conftest import ROOT
from harness import GatewayProcess, Service, gateway_env, new_topology

from worker.devtools.local_broker import free_port

JFK = "jfk_inaugural_1961.flac"


def test_a_lost_broker_fails_waiting_requests_at_once_and_no_record_stays_queued(restartable, tmp_path, audio_dir):
    service = Service(broker_url=restartable.url, root=tmp_path, topology=new_topology())
    port = free_port()
    env = gateway_env(service, port, tmp_path, gateway_result_timeout_seconds=600, reconnect_max_seconds=1)
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", env, tmp_path / "gateway.log", tmp_path / "uploads")
    gateway.start()
    try:
        # Given a request waiting for a result that no worker will produce (nobody consumes this queue)
        answer: dict = {}

        def wait_for_result() -> None:
            with open(audio_dir / JFK, "rb") as audio:
                response = requests.post(f"{gateway.url}/v1/audio/transcriptions", files={"file": audio}, timeout=300)
            answer.update(status=response.status_code, body=response.json(), at=time.monotonic())

        waiting = threading.Thread(target=wait_for_result)
        waiting.start()
        deadline = time.monotonic() + 60
        while not list((tmp_path / "uploads").iterdir()):  # stored; the publish follows at once
            assert time.monotonic() < deadline and not answer, answer
            time.sleep(0.1)
        time.sleep(1.0)

        # When the broker goes away
        stopped = time.monotonic()
        restartable.stop()
        waiting.join(120)

        # Then the request is answered 503 within seconds, not after the result timeout
        assert answer["status"] == 503 and answer["body"]["error"]["code"] == "broker_unavailable", answer
        assert answer["at"] - stopped < 30
        # And an async job published while the broker is gone is refused, and its record says so
        response = requests.post(f"{gateway.url}/v1/jobs", json={"url": "https://audio.example/a.flac"}, timeout=60)
        assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
            states = db.execute("select state from jobs").fetchall()
        assert states == [("failed",)]  # recorded before the publish, marked failed when it failed
        assert gateway.alive() and "Unhandled error" not in gateway.log()
    finally:
        gateway.stop()


def test_a_gateway_reachable_by_anyone_without_a_key_refuses_to_start(broker, tmp_path):
    service = Service(broker_url=broker, root=tmp_path, topology=new_topology())
    env = gateway_env(service, free_port(), tmp_path, gateway_host="0.0.0.0")
    done = subprocess.run([sys.executable, "cmd/gateway/main.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2 and "GATEWAY_API_KEYS is empty" in done.stderr + done.stdout


def test_a_database_from_before_owners_gets_the_column_and_its_records_stay_hidden(tmp_path):
    from worker.gateway.store import JobStore

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:  # the table as it was, with one record
        db.execute(
            "CREATE TABLE jobs (id VARCHAR(64) PRIMARY KEY, state VARCHAR(16) NOT NULL, task VARCHAR(16) NOT NULL,"
            " model VARCHAR(64) NOT NULL, upload_token VARCHAR(64), created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL,"
            " chunks_done INTEGER NOT NULL, chunks_total INTEGER NOT NULL, percent FLOAT NOT NULL, result TEXT)"
        )
        db.execute("INSERT INTO jobs VALUES ('gw-old', 'queued', 'transcribe', 'tiny.en', NULL, 1, 1, 0, 0, 0, NULL)")
    store = JobStore(f"sqlite:///{path}")
    assert store.get("gw-old").owner is None and store.get("gw-old", owner="key-a") is None
    store.add("gw-new", task="transcribe", model="tiny.en", upload_token=None, owner="key-a")
    assert store.get("gw-new", owner="key-a").id == "gw-new" and store.get("gw-new", owner="key-b") is None
    JobStore(f"sqlite:///{path}")  # a second start finds the column there
