"""The broker session (worker/service/session.py): its backoff, its reconnect loop, and the consumer check
on a real rabbitmq-server (a queue deleted and declared again at once cancels no consumer)."""

import json
import shutil
import threading
import time

import pika
import pytest
from harness import Service, completed_ids, new_topology, stop_and_check
from pydantic import ValidationError

from worker.config import Settings
from worker.devtools import local_broker
from worker.service.publisher import declare
from worker.service.session import BrokerSession, SessionOptions, backoff, connection_parameters

SHORT = "jfk_inaugural_1961.flac"


def test_the_backoff_doubles_up_to_its_cap_and_every_wait_is_jittered_below_its_step():
    steps = [1, 2, 4, 8, 16, 30, 30, 30]
    low = backoff(1.0, 30.0, jitter=0.1, rand=lambda: 1.0)
    high = backoff(1.0, 30.0, jitter=0.1, rand=lambda: 0.0)
    assert [next(high) for _ in steps] == steps  # no jitter drawn: the bare steps, capped
    assert [round(next(low), 6) for _ in steps] == [round(0.9 * s, 6) for s in steps]

    draws = [[next(d) for _ in steps] for d in (backoff(1.0, 30.0) for _ in range(20))]
    for waits in draws:
        assert all(0.9 * s <= w <= s for w, s in zip(waits, steps, strict=True))
        assert max(waits) <= 30.0  # the cap is a cap, jitter included
    assert len({tuple(waits) for waits in draws}) == 20  # jittered: no two workers wait alike
    assert next(backoff(5.0, 2.0)) <= 2.0  # an initial wait above the cap is cut to it


def test_connection_parameters_come_from_the_options():
    options = SessionOptions(heartbeat_seconds=7, blocked_connection_timeout_seconds=42.0)
    parameters = connection_parameters("amqp://u:p@example.org:5673/%2F", options)
    assert (parameters.heartbeat, parameters.blocked_connection_timeout) == (7, 42.0)
    assert (parameters.host, parameters.port) == ("example.org", 5673)


def test_several_brokers_the_first_that_answers_is_taken_and_the_next_connect_starts_after_it(broker):
    dead = [f"amqp://guest:guest@127.0.0.1:{local_broker.free_port()}/%2F" for _ in range(2)]
    session = BrokerSession(";".join([dead[0], broker, dead[1]]), SessionOptions(), order=lambda nodes: None)
    port = pika.URLParameters(broker).port
    for _ in range(2):  # and again, starting from the node after it
        session.connect().close()
        assert session.node == f"127.0.0.1:{port}"
    shuffled = {
        tuple(p.port for p in BrokerSession(";".join([*dead, broker]), SessionOptions()).nodes) for _ in range(30)
    }
    assert len(shuffled) > 1  # each session starts on a node of its own


def test_amqp_url_refuses_a_part_that_is_not_amqp_without_showing_it():
    with pytest.raises(ValidationError) as refused:
        Settings(amqp_url="amqp://u:pw-1@a:5672/%2F; https://u:pw-2@b/", _env_file=None)
    assert "broker 2 of 2" in str(refused.value) and "pw-" not in str(refused.value)
    assert Settings(amqp_url="amqp://a; amqps://b;", _env_file=None)  # spaces and a trailing `;` are fine


def test_the_reconnect_loop_backs_off_without_the_password_and_stops_when_told(log_messages):
    url = f"amqp://transcriber:pw-s3cret@127.0.0.1:{local_broker.free_port()}/%2F"  # nothing listens there
    session = BrokerSession(url, SessionOptions(reconnect_initial_seconds=0.2, reconnect_max_seconds=0.4))
    stop = threading.Event()
    thread = threading.Thread(target=session.run, args=(lambda connection: None,), kwargs={"stop": stop})
    thread.start()
    deadline = time.monotonic() + 30
    while sum("reconnecting in" in m for _, m in log_messages) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)

    failures = [m for _, m in log_messages if "reconnecting in" in m]
    assert len(failures) >= 4 and not thread.is_alive() and session.connects == 0
    assert all("pw-s3cret" not in m for _, m in log_messages)


# --- the consumer check, on worker processes ---


@pytest.fixture
def service(broker, tmp_path, audio_dir):
    svc = Service(broker_url=broker, root=tmp_path, topology=new_topology())
    svc.input_dir.mkdir()
    shutil.copyfile(audio_dir / SHORT, svc.input_dir / SHORT)
    yield svc
    stop_and_check(svc)


@pytest.mark.parametrize("interactive", [False, True], ids=["jobs-queue", "interactive-queue"])
def test_a_queue_deleted_and_declared_again_at_once_is_consumed_again(service, interactive):
    # Given a worker consuming (the jobs queue and the interactive lane's), and checking its consumers every second
    worker = service.start_worker(consumer_check_seconds=1, fanout_min_seconds=0)
    worker.wait_for("Consuming")
    client = service.client()

    # When the queue is deleted and declared again at once (as every worker declares it): no
    # Basic.Cancel reaches the worker, and the broker keeps counting its consumer
    t = service.topology
    client.channel.queue_delete(t.interactive_queue if interactive else t.jobs_queue)
    declare(client.channel, t)
    client.enqueue({"job_id": "redeclared-1", "audio": {"path": SHORT}}, interactive=interactive)

    # Then the check finds the consumer gone, the worker subscribes again, and the job completes
    results = client.results(
        lambda rs: "redeclared-1" in completed_ids(rs), timeout=120, alive=lambda: worker.wait_for("Consuming")
    )
    assert completed_ids(results) == ["redeclared-1"]
    # Without the check the job never completes (the ghost holds the worker's subscription). Which way
    # the check finds it depends on when it runs: the new queue may or may not count the ghost (logged
    # "no longer delivers", or cancelled and subscribed again quietly), and a check between the delete
    # and the declare finds no queue and leaves it to the next one.
    assert "The broker cancelled the consumer" not in worker.log()  # the check did it, not a Basic.Cancel
    client.close()


def test_the_check_leaves_a_consumer_the_broker_still_has_alone(service):
    worker = service.start_worker(consumer_check_seconds=1, fanout_min_seconds=0)
    worker.wait_for("Consuming")
    client = service.client()
    time.sleep(3.5)  # a few checks go by, with nothing to take
    client.enqueue({"job_id": "checked-1", "audio": {"path": SHORT}})
    results = client.results(
        lambda rs: "checked-1" in completed_ids(rs), timeout=120, alive=lambda: worker.wait_for("Consuming")
    )
    assert completed_ids(results) == ["checked-1"]
    assert "no longer delivers" not in worker.log() and worker.log().count("Consuming") == 1
    client.close()


def test_a_delivery_whose_callback_raises_is_requeued_later_and_the_worker_serves_on(service):
    # Given a job whose headers break the delivery callback (an x-delivery-count that is not a number,
    # from a buggy publisher): before the guard, the exception killed the connection thread, and the worker
    worker = service.start_worker(fanout_min_seconds=0)
    worker.wait_for("Consuming")
    client = service.client()
    properties = pika.BasicProperties(
        delivery_mode=2, message_id="poison-1", correlation_id="poison-1", headers={"x-delivery-count": "many"}
    )
    job = {"job_id": "poison-1", "audio": {"path": SHORT}}
    client.channel.basic_publish("", service.topology.jobs_queue, json.dumps(job).encode(), properties)
    client.enqueue({"job_id": "after-poison", "audio": {"path": SHORT}})

    # Then the failure is logged with the job id, the job comes back a few seconds later (the broker's
    # redelivery count replaces the bad header) and completes, and the worker took the next job meanwhile
    results = client.results(
        lambda rs: {"poison-1", "after-poison"} <= set(completed_ids(rs)),
        timeout=120,
        alive=lambda: worker.wait_for("Consuming"),
    )
    assert sorted(completed_ids(results)) == ["after-poison", "poison-1"]
    assert "The job_delivery callback failed on a message of job poison-1; it is requeued in 5 s" in worker.log()
    assert worker.process.poll() is None and worker.log().count("Consuming") == 1  # no reconnect either
    client.close()
