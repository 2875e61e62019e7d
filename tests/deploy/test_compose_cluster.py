"""deploy/compose.cluster.yml for real: three broker containers in one cluster, two workers and the gateway
given all three; the node a worker is connected to is killed (`docker kill`) under load. Every job completes
once, the gateway's waiting request is answered, and the time the worker took to consume again is printed.

Not in `make test` (it would add about 4 minutes to a budget the compose scenario already strains): run it
by hand with COMPOSE_CLUSTER_TESTS=1 (docs/reliability.md has its figures)."""

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT
from harness import Client
from openai import OpenAI

from worker.devtools.containers import docker
from worker.devtools.local_broker import free_port

from .conftest import HERE, STEPS, Stack, compose_stack
from .test_compose import JFK, LONG, enqueue_path, results_once, topology

NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")
CONNECTED = re.compile(r"Connected to the broker at (rabbitmq(?:-\d)?):5672")


@pytest.fixture(scope="module")
def cluster_stack(base_images, tmp_path_factory) -> Iterator[Stack]:
    if os.environ.get("COMPOSE_CLUSTER_TESTS") != "1":
        pytest.skip("the compose cluster is run by hand: COMPOSE_CLUSTER_TESTS=1")
    yield from compose_stack(
        base_images,
        tmp_path_factory.mktemp("compose-cluster"),
        files=(ROOT / "deploy" / "compose.cluster.yml", HERE / "compose.cluster.test.yml"),
        secrets_env=f"RABBITMQ_ERLANG_COOKIE={secrets.token_hex(20)}\n",
        AMQP_PORT_2=str(free_port()),
        AMQP_PORT_3=str(free_port()),
    )


def running_nodes(container: str) -> list[str]:
    status = docker("exec", container, "rabbitmqctl", "cluster_status", "--formatter", "json")
    return sorted(json.loads(status)["running_nodes"])


def test_a_killed_node_under_load_loses_and_duplicates_nothing(cluster_stack: Stack, audio_dir):
    stack = cluster_stack
    with STEPS.timed("cluster: build and up (3 nodes, 2 workers, the gateway)"):
        stack.compose.run("build", timeout=3600)
        stack.compose.run("up", "-d", "--scale", "worker=2")
        stack.compose.wait_healthy([*NODES, "worker", "gateway"], timeout=600)
    (first,) = stack.compose.containers("rabbitmq")
    assert running_nodes(first) == [f"rabbit@{n}" for n in NODES]

    workers = stack.compose.containers("worker")
    node = CONNECTED.findall(stack.compose.logs(workers[0]))[-1]
    (victim,) = stack.compose.containers(node)
    # The test's own client on a node that stays: the first one's published port, or the second's.
    port = stack.amqp_port if node != "rabbitmq" else int(stack.compose.variables["AMQP_PORT_2"])
    url = stack.amqp_url.replace(f":{stack.amqp_port}/", f":{port}/")
    client = Client(url, topology())
    expected = {f"load-{i}" for i in range(6)}
    for i, job_id in enumerate(sorted(expected)):
        enqueue_path(stack, client, job_id, LONG if i == 0 else JFK, audio_dir)
    client.close()
    openai = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=stack.api_key, max_retries=0, timeout=600)
    with ThreadPoolExecutor(1) as pool, (audio_dir / JFK).open("rb") as audio:
        request = pool.submit(openai.audio.transcriptions.create, model="whisper-1", file=audio, response_format="text")
        time.sleep(2.0)  # the jobs running
        consuming = stack.compose.logs(workers[0]).count("Consuming")
        killed = time.monotonic()
        docker("kill", victim)
        while stack.compose.logs(workers[0]).count("Consuming") <= consuming:
            assert time.monotonic() - killed < 120, stack.compose.logs(workers[0])[-3000:]
            time.sleep(0.2)
        STEPS.notes[f"cluster: worker consuming again after its node ({node}) was killed"] = (
            f"{time.monotonic() - killed:.1f} s"
        )
        completed = results_once(stack, expected, url=url)
        assert "country" in request.result(timeout=600)
    assert sorted(c for c in completed if c in expected) == sorted(expected), completed
    docker("start", victim)
    stack.compose.wait_healthy(NODES, timeout=300)
    assert running_nodes(first) == [f"rabbit@{n}" for n in NODES]
