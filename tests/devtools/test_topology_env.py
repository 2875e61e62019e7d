"""topology_env: the environment a test or benchmark hands a worker reads back as the same topology."""

import dataclasses

import pytest
from harness import new_topology

from worker import wiring
from worker.config import Settings
from worker.devtools.topology_env import topology_env


@pytest.mark.parametrize("fanout", [True, False], ids=["with-chunk-queue", "without"])
def test_the_environment_reads_back_as_the_same_topology(fanout, monkeypatch):
    topology = new_topology(delivery_limit=4)
    if not fanout:
        topology = dataclasses.replace(topology, chunks_queue=None, chunks_dead_letter_queue="")
    for key, value in topology_env(topology).items():
        monkeypatch.setenv(key, value)

    assert wiring.topology(Settings(_env_file=None)) == topology
