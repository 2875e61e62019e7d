"""Where /metrics and /healthz listen: loopback unless METRICS_HOST says otherwise (a real socket each)."""

import socket
import urllib.request

import pytest

from worker.config import Settings
from worker.devtools import local_broker
from worker.service import metrics


def test_the_default_metrics_host_is_loopback(monkeypatch):
    monkeypatch.delenv("METRICS_HOST", raising=False)
    assert Settings(_env_file=None).metrics_host == "127.0.0.1"


@pytest.fixture
def served():
    servers = []

    def serve(**host):
        port = local_broker.free_port()
        servers.append(metrics.serve(port, lambda: True, **host))
        return port

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("host", [{"host": "127.0.0.1"}, {}], ids=["host=127.0.0.1", "default"])
def test_the_metrics_server_listens_on_the_host_it_is_given_only(served, host):
    port = served(**host)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert (response.status, response.read()) == (200, b"ok\n")
    # Another loopback address of this host (all of 127/8 is loopback on Linux) reaches a socket bound
    # to 0.0.0.0, not one bound to 127.0.0.1.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass


def test_the_metrics_server_listens_on_every_address_when_told(served):
    port = served(host="0.0.0.0")

    with socket.create_connection(("127.0.0.2", port), timeout=5):
        pass
