"""The keys file reloaded without a restart (worker/gateway/tenants.py's Tenants): on SIGHUP, and when
the file changes; a file that breaks the format, or names no key, leaves the keys in force. Real gateway
processes (no worker: only who gets in is looked at)."""

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from harness import GatewayProcess, Service, gateway_env, new_topology

from worker.devtools.local_broker import free_port

OLD, NEW = "old-team-key", "new-team-key"


def write_keys(path: Path, *keys: str) -> None:
    """As an operator's tool would: a new file moved over the old one."""
    digests = ", ".join(f'"{hashlib.sha256(k.encode()).hexdigest()}"' for k in keys)
    staged = path.with_suffix(".new")
    staged.write_text(f"[tenants.team]\nkey_sha256 = [{digests}]\n" if keys else "[tenants]\n")
    os.replace(staged, path)


def status(gateway: GatewayProcess, key: str) -> int:
    return requests.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10).status_code


def wait_for(gateway: GatewayProcess, key: str, wanted: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (found := status(gateway, key)) != wanted:
        assert time.monotonic() < deadline, f"{key}: {found}, not {wanted}, after {timeout} s\n{gateway.log()[-2000:]}"
        time.sleep(0.2)


@pytest.fixture
def start(broker, tmp_path):
    started = []

    def start_gateway(reload_seconds: float) -> GatewayProcess:
        write_keys(tmp_path / "keys.toml", OLD)
        port = free_port()
        service = Service(broker_url=broker, root=tmp_path, topology=new_topology())
        env = gateway_env(service, port, tmp_path, gateway_keys_file=tmp_path / "keys.toml",
                          gateway_keys_reload_seconds=reload_seconds)  # fmt: skip
        gateway = GatewayProcess(f"http://127.0.0.1:{port}", env, tmp_path / "gateway.log", tmp_path / "uploads")
        started.append(gateway)
        gateway.start()
        assert (status(gateway, OLD), status(gateway, NEW)) == (200, 401)
        return gateway

    yield start_gateway
    for gateway in started:
        gateway.stop()


def test_sighup_reloads_the_keys_file_and_a_removed_key_is_refused(start, tmp_path):
    gateway = start(reload_seconds=0)  # SIGHUP only
    write_keys(tmp_path / "keys.toml", NEW)
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(gateway, NEW, 200)
    assert status(gateway, OLD) == 401  # revoked without a restart
    assert gateway.alive() and "Keys reloaded: 1 key(s) of 1 tenant(s)" in gateway.log()


def test_a_changed_file_is_reloaded_and_a_broken_or_empty_one_leaves_the_keys_in_force(start, tmp_path):
    gateway = start(reload_seconds=0.2)
    write_keys(tmp_path / "keys.toml", OLD, NEW)  # a rotation: both keys for a while
    wait_for(gateway, NEW, 200)
    assert status(gateway, OLD) == 200

    (tmp_path / "keys.toml").write_text("[tenants.team\n")  # an editor's slip
    deadline = time.monotonic() + 30
    while "Keys not reloaded" not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()[-2000:]
        time.sleep(0.2)
    assert (status(gateway, OLD), status(gateway, NEW)) == (200, 200) and "not TOML" in gateway.log()

    write_keys(tmp_path / "keys.toml")  # no key at all: the gateway would be open to anyone
    deadline = time.monotonic() + 30
    while "names no key" not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()[-2000:]
        time.sleep(0.2)
    assert (status(gateway, OLD), status(gateway, NEW), status(gateway, "anyone")) == (200, 200, 401)
