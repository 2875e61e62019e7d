"""The interactive lane on a real broker and a real worker (tiny.en on real speech): a job on the
interactive queue goes ahead of the bulk backlog, and of the bulk job already running, chunk by chunk.
Orders are asserted, never wall times."""

import dataclasses
import json
import shutil
import threading
import time

import numpy as np
import pytest
from harness import new_topology

from worker.media.audio import decode_audio, write_wav
from worker.messages import Result
from worker.pipeline import Lanes, PipelineOptions, Processor
from worker.service.consumer import Consumer
from worker.service.jobs import HandlerOptions, JobHandler
from worker.service.publisher import Topology, publish_job

LONG = "ljspeech_LJ001-0001_to_0032_concat.wav"  # 231 s: chunks enough to be overtaken
SHORT = "librivox_shakespeare_sonnet001.mp3"


@pytest.fixture
def topology() -> Topology:
    return dataclasses.replace(new_topology(), chunks_queue=None, chunks_dead_letter_queue="")  # no fan-out


def _publish(channel, topology: Topology, job_id: str, name: str, *, interactive: bool = False) -> None:
    body = json.dumps({"job_id": job_id, "audio": {"path": name}}).encode()
    publish_job(channel, topology, body, job_id, published_at=time.time(), interactive=interactive)


def test_an_interactive_job_overtakes_the_bulk_backlog_and_the_running_bulk_job(
    broker, channel, topology, transcriber, tmp_path, audio_dir
):
    (tmp_path / "in").mkdir()
    for name in (LONG, SHORT):
        shutil.copyfile(audio_dir / name, tmp_path / "in" / name)
    lanes = Lanes()
    processor = Processor(transcriber, model_name="tiny.en", options=PipelineOptions(workers=2), lanes=lanes)
    options = HandlerOptions(input_dir=tmp_path / "in", output_dir=tmp_path / "out", delivery_limit=3)
    settled, everything_settled = [], threading.Event()

    def on_settled(outcome) -> None:
        settled.append(outcome.result.job_id)
        if len(settled) == 3:
            everything_settled.set()

    progress = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(progress, topology.progress_exchange, routing_key="#")
    consumer = Consumer(
        url=broker,
        topology=topology,
        handler=JobHandler(lambda model: processor, options),
        concurrent_jobs=1,
        interactive_jobs=1,
        on_settled=on_settled,
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert consumer.connected.wait(30)
        _publish(channel, topology, "bulk-1", LONG)
        _publish(channel, topology, "bulk-2", LONG)
        events = _events_until(channel, progress, lambda e: e["job_id"] == "bulk-1" and e["stage"] == "transcribing")
        _publish(channel, topology, "asked", SHORT, interactive=True)
        assert everything_settled.wait(600), f"settled: {settled}"
        events += _events_until(channel, progress, lambda e: e["job_id"] == "bulk-2" and e["stage"] == "completed")
    finally:
        consumer.stop()
        thread.join(120)

    # The queue: the interactive job did not wait for the backlog, nor for the bulk job running.
    assert settled == ["asked", "bulk-1", "bulk-2"], settled
    # The transcriber: while the interactive job ran, the running bulk job finished no more chunks than
    # it had in flight when the interactive one came; then it went on.
    stages = [(e["job_id"], e["stage"]) for e in events]
    began, ended = stages.index(("asked", "decoding")), stages.index(("asked", "completed"))
    overtaken = [s for s in stages[began:ended] if s == ("bulk-1", "transcribing")]
    after = [s for s in stages[ended:] if s == ("bulk-1", "transcribing")]
    assert len(overtaken) <= processor.runner.in_flight and len(after) >= 2, stages
    assert lanes.bulk_waits >= 1
    result = Result.model_validate_json(_result_of(channel, topology, "asked"))
    assert result.status == "completed" and "fairest creatures" in result.text.lower()


def _events_until(channel, queue: str, last) -> list[dict]:
    events = []
    for method, _properties, body in channel.consume(queue, inactivity_timeout=300):
        assert method is not None, f"no progress within 300 s; seen {[(e['job_id'], e['stage']) for e in events]}"
        channel.basic_ack(method.delivery_tag)
        events.append(json.loads(body))
        if last(events[-1]):
            break
    channel.cancel()
    return events


def _result_of(channel, topology: Topology, job_id: str) -> bytes:
    for method, properties, body in channel.consume(topology.results_queue, inactivity_timeout=30):
        assert method is not None, f"no result for {job_id}"
        channel.basic_ack(method.delivery_tag)
        if properties.correlation_id == job_id:
            channel.cancel()
            return body
    raise AssertionError("unreachable")


def test_an_interactive_job_goes_to_an_idle_worker_before_a_busy_one(
    broker, channel, topology, transcriber, tmp_path, audio_dir
):
    (tmp_path / "in").mkdir()
    shutil.copyfile(audio_dir / SHORT, tmp_path / "in" / SHORT)
    # 4 x 231 s: a bulk job that outlasts three short ones, however fast the host
    write_wav(tmp_path / "in" / "longer.wav", np.tile(decode_audio(audio_dir / LONG), 4))
    settled: dict[str, list[str]] = {"busy": [], "idle": []}
    progress = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(progress, topology.progress_exchange, routing_key="#")

    def start(name: str) -> tuple[Consumer, threading.Thread]:
        processor = Processor(transcriber, model_name="tiny.en", options=PipelineOptions(workers=2), lanes=Lanes())
        options = HandlerOptions(input_dir=tmp_path / "in", output_dir=tmp_path / "out" / name, delivery_limit=3)
        consumer = Consumer(url=broker, topology=topology, handler=JobHandler(lambda model: processor, options),
                            on_settled=lambda outcome: settled[name].append(outcome.result.job_id))  # fmt: skip
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        assert consumer.connected.wait(30)
        return consumer, thread

    running = [start("busy")]
    try:
        _publish(channel, topology, "bulk", "longer.wav")
        _events_until(channel, progress, lambda e: e["job_id"] == "bulk" and e["stage"] == "transcribing")
        running.append(start("idle"))
        time.sleep(2)  # a loop of each connection thread: the busy worker's lane consumer at its busy priority
        for k in range(3):  # each alone: round-robin would give the busy worker some
            _publish(channel, topology, f"asked-{k}", SHORT, interactive=True)
            deadline = time.monotonic() + 300
            while f"asked-{k}" not in settled["busy"] + settled["idle"]:
                assert time.monotonic() < deadline, settled
                time.sleep(0.1)
        assert "bulk" not in settled["busy"], "the bulk job ended too soon to tell"
    finally:
        for consumer, thread in running:
            consumer.stop()
            thread.join(120)
    assert settled["idle"] == ["asked-0", "asked-1", "asked-2"] and settled["busy"] == ["bulk"], settled
