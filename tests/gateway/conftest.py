"""Fixtures of the gateway's tests."""

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import OwnBroker


@pytest.fixture
def restartable() -> Iterator[OwnBroker]:
    """A rabbitmq-server of the test's own, started: the test stops it (and may start it again)."""
    broker = OwnBroker(Path(tempfile.mkdtemp(prefix="worker-rabbitmq-gw-")), "transcriber", f"pw-{uuid.uuid4().hex}")
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(broker.base, ignore_errors=True)
