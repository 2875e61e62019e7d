"""Fixtures shared by the service's tests against the session's rabbitmq-server."""

import pika
import pytest

from worker.service.publisher import declare


@pytest.fixture
def channel(broker, topology):
    """A confirming channel on the module's `topology` (declared); its queues deleted afterwards."""
    connection = pika.BlockingConnection(pika.URLParameters(broker))
    ch = connection.channel()
    ch.confirm_delivery()
    declare(ch, topology)
    yield ch
    t = topology
    for name in filter(None, (t.jobs_queue, t.interactive_queue, t.results_queue, t.dead_letter_queue)):
        ch.queue_delete(name)
    connection.close()
