"""The gateway's broker thread never dies (a real rabbitmq-server): callbacks that raise are logged,
counted and survived; a lost connection calls on_disconnect and fails the jobs not yet confirmed."""

import threading
import time

import pika
import pytest
from harness import new_topology
from prometheus_client import REGISTRY

from worker.errors import BrokerUnavailable
from worker.gateway import broker as gateway_broker
from worker.gateway.broker import BrokerClient
from worker.messages import ProgressEvent, Result
from worker.service.session import SessionOptions


def errors(callback: str) -> float:
    return REGISTRY.get_sample_value("transcription_broker_callback_errors_total", {"callback": callback}) or 0.0


def result(job_id: str) -> bytes:
    return Result(job_id=job_id, status="completed", text="hello").model_dump_json().encode()


def test_the_broker_thread_survives_the_database_raising_in_progress_results_and_replies(broker, monkeypatch):
    monkeypatch.setattr(gateway_broker, "REQUEUE_DELAY_SECONDS", 0.5)
    topology = new_topology()
    replies: list[str] = []
    recorded: list[str] = []
    progress_calls: list[str] = []
    replied, stored = threading.Event(), threading.Event()

    def on_progress(event: ProgressEvent) -> None:  # the job store's database is down
        progress_calls.append(event.job_id)
        raise ConnectionError("the database is down")

    def on_result(r: Result) -> None:
        if r.job_id == "bad-reply":
            raise RuntimeError("a bug in the waiter")
        replies.append(r.job_id)
        replied.set()

    def on_async_result(r: Result) -> None:
        recorded.append(r.job_id)
        if len(recorded) == 1:
            raise ConnectionError("the database is down")
        stored.set()

    before = {name: errors(name) for name in ("gateway_progress", "gateway_result", "gateway_async_result")}
    client = BrokerClient(
        broker,
        topology,
        async_results_queue=f"gateway.results.{time.monotonic_ns()}",
        on_result=on_result,
        on_async_result=on_async_result,
        on_progress=on_progress,
    )
    client.start()
    try:
        assert client.connected.is_set()
        connection = pika.BlockingConnection(pika.URLParameters(broker))
        channel = connection.channel()
        channel.confirm_delivery()
        # Given progress events that the database refuses, a reply whose waiter raises, an async result
        # that cannot be recorded at first
        for percent in (10.0, 20.0):
            event = ProgressEvent(job_id="job-1", stage="transcribing", percent=percent)
            channel.basic_publish(topology.progress_exchange, "job-1", event.model_dump_json().encode())
        channel.basic_publish("", client.reply_queue, result("bad-reply"))
        channel.basic_publish("", client.async_results_queue, result("async-1"))
        # When results come after them
        channel.basic_publish("", client.reply_queue, result("good-reply"))
        # Then they arrive: the thread lived through every failure
        assert replied.wait(30) and stored.wait(30)
        connection.close()
    finally:
        client.stop()
    assert replies == ["good-reply"] and recorded == ["async-1", "async-1"]  # requeued, then recorded
    assert progress_calls == ["job-1", "job-1"]
    assert errors("gateway_progress") - before["gateway_progress"] == 2  # logged, counted, dropped
    assert errors("gateway_result") - before["gateway_result"] == 1
    assert errors("gateway_async_result") - before["gateway_async_result"] == 1


def test_a_lost_connection_calls_on_disconnect_and_fails_the_jobs_not_yet_confirmed(restartable):
    disconnects: list[float] = []
    lost = threading.Event()
    hold = threading.Event()
    holding = threading.Event()

    def on_disconnect() -> None:
        disconnects.append(time.monotonic())
        lost.set()

    def on_progress(event: ProgressEvent) -> None:  # keeps the broker thread busy until the test lets go
        holding.set()
        hold.wait(60)

    topology = new_topology()
    client = BrokerClient(
        restartable.url,
        topology,
        async_results_queue="gateway.results.guard",
        on_result=lambda r: None,
        on_async_result=lambda r: None,
        on_progress=on_progress,
        on_disconnect=on_disconnect,
        options=SessionOptions(reconnect_initial_seconds=0.2, reconnect_max_seconds=1.0),
    )
    client.start()
    try:
        assert client.connected.is_set()
        # Given a job handed to the broker thread while it is busy, so that the broker has not confirmed it
        connection = pika.BlockingConnection(pika.URLParameters(restartable.url))
        event = ProgressEvent(job_id="job-1", stage="transcribing", percent=10.0)
        connection.channel().basic_publish(topology.progress_exchange, "job-1", event.model_dump_json().encode())
        connection.close()
        assert holding.wait(30)
        unconfirmed = client.publish("job-2", b"{}", wait=True)

        # When the broker goes away
        restartable.stop()
        hold.set()

        # Then the app hears of it at once, and the job's future fails instead of hanging
        assert lost.wait(30)
        with pytest.raises(BrokerUnavailable):
            unconfirmed.result(timeout=30)
        assert not client.connected.is_set()
        with pytest.raises(BrokerUnavailable):
            client.publish("job-3", b"{}").result(timeout=5)

        # And once the broker is back, the client connects again and publishes
        restartable.start()
        deadline = time.monotonic() + 60
        while not client.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.connected.is_set()
        assert client.publish("job-4", b"{}").result(timeout=30) is None
    finally:
        hold.set()
        client.stop()
    assert len(disconnects) >= 1


def test_a_results_queue_deleted_and_declared_again_at_once_is_consumed_again(broker):
    recorded: list[str] = []
    stored = threading.Event()

    def on_async_result(r: Result) -> None:
        recorded.append(r.job_id)
        stored.set()

    queue = f"gateway.results.{time.monotonic_ns()}"
    client = BrokerClient(
        broker,
        new_topology(),
        async_results_queue=queue,
        on_result=lambda r: None,
        on_async_result=on_async_result,
        on_progress=lambda e: None,
        options=SessionOptions(consumer_check_seconds=0.5),
    )
    client.start()
    try:
        assert client.connected.is_set()
        # Given the replicas' results queue deleted and declared again at once (no Basic.Cancel comes)
        connection = pika.BlockingConnection(pika.URLParameters(broker))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        # When a result arrives on it
        channel.basic_publish("", queue, result("async-2"))
        # Then the check finds the consumer gone, subscribes again, and the result is recorded
        assert stored.wait(30), "the result was never delivered"
        connection.close()
    finally:
        client.stop()
    assert recorded == ["async-2"]
