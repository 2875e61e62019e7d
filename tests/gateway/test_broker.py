"""The gateway's broker client on a real rabbitmq-server: an async result it cannot record waits, then comes back."""

import threading
import time

import pika
from harness import new_topology

from worker.gateway import broker as gateway_broker
from worker.gateway.broker import BrokerClient
from worker.messages import Result


def test_a_result_the_database_cannot_take_is_requeued_later_not_in_a_tight_loop(broker, monkeypatch):
    monkeypatch.setattr(gateway_broker, "REQUEUE_DELAY_SECONDS", 1.0)
    attempts: list[float] = []
    recorded = threading.Event()
    database_up = threading.Event()

    def record(result: Result) -> None:  # what the gateway's JobStore does, with its database down for a while
        attempts.append(time.monotonic())
        if not database_up.is_set():
            raise ConnectionError("the database is down")
        recorded.set()

    queue = f"gateway.results.{time.monotonic_ns()}"
    client = BrokerClient(
        broker,
        new_topology(),
        async_results_queue=queue,
        on_result=lambda r: None,
        on_async_result=record,
        on_progress=lambda e: None,
    )
    client.start()
    try:
        assert client.connected.is_set()
        connection = pika.BlockingConnection(pika.URLParameters(broker))
        body = Result(job_id="gw-1", status="completed", text="hello").model_dump_json().encode()
        connection.channel().basic_publish("", queue, body)
        connection.close()
        time.sleep(3.5)
        failed_while_down = len(attempts)
        database_up.set()
        assert recorded.wait(10)
    finally:
        client.stop()
    # One attempt, then one a second: an immediate requeue would have come back hundreds of times.
    assert 3 <= failed_while_down <= 5, attempts
