"""Fan-out across real worker processes on a real rabbitmq-server: a long job's chunks go out as
chunk tasks, any worker transcribes them, the coordinator gathers them; kills, poison and bad
chunk tasks lose nothing and leave nothing on the broker.
"""

import collections
import dataclasses
import datetime
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pika
import pika.exceptions
import pytest
import soundfile
from conftest import non_speech
from harness import Client, Service, WorkerProcess, completed_ids

from worker.devtools.local_broker import ctl, free_port
from worker.media.audio import decode_audio, encode_flac, write_wav
from worker.messages import ProgressEvent, Result
from worker.messages.fanout import ChunkTask, GatherMessage
from worker.service.publisher import declare_gather

from .conftest import LEDGER
from .test_faults import SHORT_CONSUMER_TIMEOUT, exactly_one_completed, healthz, results_of

LONG = "ljspeech_LJ001-0001_to_0032_concat.wav"  # 231 s: 12 chunks
GAPPED_SPEECH = ("jfk_inaugural_1961.flac", "ls_test-clean_1089-134686-0000.flac",
                 "ljspeech_LJ050-0131.wav", "librivox_sonnet001_first9s_ogg.ogg")  # fmt: skip
GAPPED_NOISE = (("pink", 20.0), ("sines", 15.0), ("clicks", 12.0), ("brown", 10.0))
SHORT = "jfk_inaugural_1961.flac"
# One whisper call of one thread per worker: the same decoding in both modes, and chunks spread out.
FAN = {"fanout_min_seconds": 60, "max_parallel_workers": 1, "whisper_threads": 1, "log_level": "DEBUG"}
STARTED = re.compile(r"Starting transcription: chunk_(\d{4})\.wav")
BACK = re.compile(r"Chunk (\d+) back from")


def stamp(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")


def chunk_starts(*workers: WorkerProcess, job_id: str | None = None) -> collections.Counter:
    """How many times each chunk index (of `job_id`, or of any job) was started, over the workers' logs."""
    lines = [line for w in workers for line in w.log().splitlines() if job_id is None or f"| {job_id} |" in line]
    return collections.Counter(int(m.group(1)) for line in lines if (m := STARTED.search(line)))


def coordinator_of(workers: list[WorkerProcess], timeout: float = 60.0) -> WorkerProcess:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if "Fanning out" in worker.log():
                return worker
        time.sleep(0.1)
    raise AssertionError("no worker fanned the job out")


def queue_exists(client: Client, queue: str) -> bool:
    channel = client.connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    channel.close()
    return True


def assert_broker_clean(client: Client, job_id: str, *, chunk_dead_letters: int | range = 0) -> None:
    """Nothing left of the job: its gather queue is gone, no chunk task waits (orphans are dropped), and
    `chunk_dead_letters` chunk tasks were dead-lettered (that many, or a number in that range)."""
    t = client.topology
    deadline = time.monotonic() + 30
    while (
        client.depth(t.chunks_queue) or queue_exists(client, t.gather_queue(job_id))
    ) and time.monotonic() < deadline:
        client.connection.sleep(0.2)
    assert client.depth(t.chunks_queue) == 0
    assert not queue_exists(client, t.gather_queue(job_id))
    dead = len(client.drain(t.chunks_dead_letter_queue, settle_seconds=0))
    assert dead in chunk_dead_letters if isinstance(chunk_dead_letters, range) else dead == chunk_dead_letters


def transcribe_in_process(service: Service, client: Client) -> Result:
    """The single-worker reference: the same audio with fan-out off."""
    worker = service.start_worker(**{**FAN, "fanout_min_seconds": 0})
    worker.wait_for("Consuming")
    client.enqueue({"job_id": "in-process-1", "audio": {"path": LONG}, "word_timestamps": True})
    (result,) = exactly_one_completed(client, "in-process-1", worker)
    assert "Fanning out" not in worker.log() and "Taking chunk tasks" not in worker.log()
    assert worker.stop() == 0
    return result


def test_a_fanned_out_job_has_the_single_worker_text_and_leaves_nothing(service, audio_dir):
    shutil.copyfile(audio_dir / LONG, service.input_dir / LONG)
    shutil.copyfile(audio_dir / SHORT, service.input_dir / SHORT)
    client = service.client()
    reference = transcribe_in_process(service, client)
    progress = client.channel.queue_declare("", exclusive=True).method.queue
    client.channel.queue_bind(progress, service.topology.progress_exchange, routing_key="fanned-1")
    workers = [service.start_worker(**FAN) for _ in range(2)]
    for worker in workers:
        worker.wait_for("Taking chunk tasks")

    client.enqueue({"job_id": "fanned-1", "audio": {"path": LONG}, "word_timestamps": True})
    coordinator_of(workers).wait_for("Published 12 chunk tasks")
    client.enqueue({"job_id": "next-1", "audio": {"path": SHORT}})  # while fanned-1's chunks are out
    results = client.results(lambda rs: {"fanned-1", "next-1"} <= set(completed_ids(rs)))
    results += results_of(client, client.drain(service.topology.results_queue, settle_seconds=2))
    LEDGER.account({"fanned-1", "next-1"}, completed_ids(results))
    assert sorted(completed_ids(results)) == ["fanned-1", "next-1"]
    (result,) = [r for r in results if r.job_id == "fanned-1"]

    assert reference.chunks == result.chunks == 12
    assert result.text == reference.text  # greedy decoding: the same text, whichever worker did a chunk
    assert result.segments == reference.segments  # words included, in absolute time
    words = [w.start for s in result.segments for w in s.words]
    assert words == sorted(words) and words[-1] > result.duration_seconds - 30  # the last chunk's words at the end
    starts = chunk_starts(*workers, job_id="fanned-1")
    assert sorted(starts) == list(range(12)) and set(starts.values()) == {1}  # each chunk once
    assert all(STARTED.search(w.log()) for w in workers), "both workers transcribed chunks"
    # Chunk tasks before new jobs: next-1 was taken only once fanned-1's chunks had all started.
    last_chunk = max(
        stamp(line) for w in workers for line in w.log().splitlines() if STARTED.search(line) and "| fanned-1 |" in line
    )
    next_taken = min(stamp(line) for w in workers for line in w.log().splitlines() if "Processing job next-1" in line)
    assert next_taken > last_chunk
    events = [ProgressEvent.model_validate_json(body) for _, body in client.drain(progress)]
    transcribing = [e for e in events if e.stage == "transcribing"]
    assert [e.chunks_done for e in transcribing] == list(range(1, 13))
    texts = [e.text for e in sorted(transcribing, key=lambda e: e.chunk_index) if e.text]  # as a stream sends them
    assert " ".join(texts) == result.text
    assert_broker_clean(client, "fanned-1")
    client.close()


def test_a_fanned_out_job_of_speech_pieces_has_the_in_process_segments(service, audio_dir, tmp_path):
    # Speech between long stretches of noise and tones: VAD chunks of several pieces each, the gaps cut out.
    parts = []
    for name, (kind, seconds) in zip(GAPPED_SPEECH, GAPPED_NOISE, strict=True):
        parts += [decode_audio(audio_dir / name), non_speech(kind, seconds, tmp_path)]
    write_wav(service.input_dir / "gapped.wav", np.concatenate(parts))
    client = service.client()
    reference = service.start_worker(**{**FAN, "fanout_min_seconds": 0})
    reference.wait_for("Consuming")
    client.enqueue({"job_id": "gapped-in-process-1", "audio": {"path": "gapped.wav"}, "word_timestamps": True})
    (alone,) = exactly_one_completed(client, "gapped-in-process-1", reference)
    assert reference.stop() == 0
    workers = [service.start_worker(**FAN) for _ in range(2)]
    for worker in workers:
        worker.wait_for("Taking chunk tasks")

    client.enqueue({"job_id": "gapped-fanned-1", "audio": {"path": "gapped.wav"}, "word_timestamps": True})
    (fanned,) = exactly_one_completed(client, "gapped-fanned-1", workers[0])
    assert "Fanning out" in "".join(w.log() for w in workers)
    assert fanned.chunks == alone.chunks >= 2
    assert fanned.segments == alone.segments  # words included: each piece's times put back the same way
    assert fanned.text and fanned.segments[-1].end > 80  # the last clip, after three gaps, where it was spoken
    assert_broker_clean(client, "gapped-fanned-1")
    client.close()


def conversation(audio_dir, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """Two speakers taking turns, over a minute: (left channel, right channel), each with the other's bleed."""
    turns = [(0, "jfk_inaugural_1961.flac"), (1, "ls_test-clean_1089-134686-0000.flac"),
             (0, "ljspeech_LJ050-0131.wav"), (1, "ls_test-clean_1089-134691-0001.flac"),
             (0, "librivox_sonnet001_first9s_ogg.ogg"), (1, "ls_dev-clean_1272-128104-0000_leopard.wav"),
             (0, "ljspeech_LJ001-0009.flac"), (1, "ls_test-clean_1089-134686-0001.flac")]  # fmt: skip
    channels: list[list[np.ndarray]] = [[], []]
    for speaker, name in turns:
        clip = decode_audio(audio_dir / name)
        pause = np.zeros(8000, np.float32)
        channels[speaker] += [clip, pause]
        channels[1 - speaker] += [np.zeros_like(clip), pause]
    left, right = (np.concatenate(c) for c in channels)
    return left + 0.1 * right, right + 0.1 * left


@pytest.mark.parametrize("diarize", ["channels", "speakers"])
def test_a_fanned_out_diarized_job_has_the_in_process_speakers(service, audio_dir, tmp_path, diarize):
    left, right = conversation(audio_dir, tmp_path)
    if diarize == "channels":
        soundfile.write(service.input_dir / "talk.wav", np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    else:
        write_wav(service.input_dir / "talk.wav", (left + right) / 2)
    job = {"audio": {"path": "talk.wav"}, "diarize": diarize, "formats": ["vtt"]}
    client = service.client()
    reference = service.start_worker(**{**FAN, "fanout_min_seconds": 0})
    reference.wait_for("Consuming")
    client.enqueue({**job, "job_id": f"talk-in-process-{diarize}"})
    (alone,) = exactly_one_completed(client, f"talk-in-process-{diarize}", reference)
    assert reference.stop() == 0
    workers = [service.start_worker(**FAN) for _ in range(2)]
    for worker in workers:
        worker.wait_for("Taking chunk tasks")

    client.enqueue({**job, "job_id": f"talk-fanned-{diarize}"})
    (fanned,) = exactly_one_completed(client, f"talk-fanned-{diarize}", workers[0])
    assert "Fanning out" in "".join(w.log() for w in workers)
    assert fanned.segments == alone.segments  # the same speakers on the same words, whichever worker
    found = list(dict.fromkeys(s.speaker for s in fanned.segments))
    # Two channels; in one channel five voices take turns (JFK, LJ Speech, a LibriVox reader, two LibriSpeech
    # readers): labels in order of first appearance.
    assert found == (["A", "B"] if diarize == "channels" else ["A", "B", "C", "D", "E"]), found
    assert "<v A>" in Path(fanned.outputs["vtt"]).read_text()
    assert_broker_clean(client, f"talk-fanned-{diarize}")
    client.close()


def test_a_chunk_worker_killed_mid_chunk_costs_only_that_chunk(service, audio_dir):
    shutil.copyfile(audio_dir / LONG, service.input_dir / LONG)
    client = service.client()
    workers = [service.start_worker(**FAN) for _ in range(2)]
    for worker in workers:
        worker.wait_for("Taking chunk tasks")

    client.enqueue({"job_id": "chunk-kill-1", "audio": {"path": LONG}})
    coordinator = coordinator_of(workers)
    (other,) = [w for w in workers if w is not coordinator]
    other.wait_for("Starting transcription", count=2)  # its second chunk, mid-way
    other.kill()
    (result,) = exactly_one_completed(client, "chunk-kill-1", coordinator)

    assert result.chunks == 12
    starts = chunk_starts(coordinator, other)
    assert sorted(starts) == list(range(12))
    # The killed worker held a batch of chunk tasks (WHISPER_BATCH_SIZE) and was decoding them together: those
    # it had started and not finished run again elsewhere, each once more; nothing else twice.
    redone = {chunk for chunk, times in starts.items() if times > 1}
    assert redone <= set(chunk_starts(other))
    assert max(starts.values()) <= 2
    assert_broker_clean(client, "chunk-kill-1")
    service.start_worker(**FAN).wait_for("Removed 1 scratch directory")  # a restart sweeps the killed one's
    LEDGER.faults_survived.append("chunk worker SIGKILL mid-chunk")
    client.close()


def test_a_coordinator_killed_mid_job_is_resumed_without_redoing_finished_chunks(service, audio_dir):
    shutil.copyfile(audio_dir / LONG, service.input_dir / LONG)
    client = service.client()
    first = service.start_worker(**FAN)
    first.wait_for("Taking chunk tasks")

    client.enqueue({"job_id": "coord-kill-1", "audio": {"path": LONG}})
    first.wait_for("back from", count=4)
    first.kill()
    finished = {int(i) for i in BACK.findall(first.log())}  # results the coordinator had: on the broker
    second = service.start_worker(**FAN)
    (result,) = exactly_one_completed(client, "coord-kill-1", second)

    assert result.attempt == 2 and result.chunks == 12
    resumed = re.search(r"Resuming: (\d+) of 12 chunk results already on the broker", second.log())
    assert resumed and int(resumed.group(1)) >= len(finished) >= 4
    assert "Published" not in second.log()  # the tasks still queued were not sent again
    assert finished.isdisjoint(chunk_starts(second)), "a finished chunk was transcribed again"
    assert sorted(chunk_starts(first, second)) == list(range(12))
    assert_broker_clean(client, "coord-kill-1")
    LEDGER.faults_survived.append("coordinator SIGKILL mid-job")
    client.close()


def test_a_chunk_that_kills_every_worker_fails_its_job_once_not_forever(service, audio_dir):
    # DELIVERY_LIMIT=1: one worker dying on a chunk makes it poison (with the default 5, five would).
    service.topology = dataclasses.replace(service.topology, delivery_limit=1)
    shutil.copyfile(audio_dir / LONG, service.input_dir / LONG)
    client = service.client()
    workers = [service.start_worker(**FAN) for _ in range(2)]
    for worker in workers:
        worker.wait_for("Taking chunk tasks")

    client.enqueue({"job_id": "poison-1", "audio": {"path": LONG}})
    coordinator = coordinator_of(workers)
    (other,) = [w for w in workers if w is not coordinator]
    other.wait_for("Starting transcription")
    other.kill()
    service.start_worker(**FAN).wait_for("Removed 1 scratch directory")  # restarted, as an orchestrator would

    (failed,) = client.results(lambda rs: len(rs) == 1, alive=lambda: coordinator.wait_for("Consuming"))
    assert failed.job_id == "poison-1" and failed.status == "failed"
    assert failed.error.code == "ChunkFailed" and "stopped before finishing it" in failed.error.message
    (dead_job,) = client.drain(service.topology.dead_letter_queue)
    assert dead_job[0].headers["x-error-code"] == "ChunkFailed"
    # Every chunk task the killed worker held (a batch, WHISPER_BATCH_SIZE) was delivered once: each is poison.
    assert_broker_clean(client, "poison-1", chunk_dead_letters=range(1, 9))
    client.enqueue({"job_id": "after-poison-1", "audio": {"path": LONG}})  # the fleet still serves
    exactly_one_completed(client, "after-poison-1", coordinator)
    client.close()


def task_headers(job_id: str, **changes) -> dict:
    task = ChunkTask(job_id=job_id, index=0, start=0, end=16000, chunks_total=1, model="tiny.en", language="en")
    return {**task.headers(), **changes}


def publish_raw(client: Client, body: bytes, headers: dict, reply_to: str | None) -> None:
    properties = pika.BasicProperties(headers=headers, reply_to=reply_to, delivery_mode=2)
    client.channel.basic_publish("", client.topology.chunks_queue, body, properties, mandatory=True)


@pytest.fixture
def fan_worker(service: Service) -> WorkerProcess:
    worker = service.start_worker(**FAN)
    worker.wait_for("Taking chunk tasks")
    return worker


def test_bad_chunk_tasks_get_typed_errors_and_the_worker_serves_on(service, fan_worker, audio_dir):
    shutil.copyfile(audio_dir / SHORT, service.input_dir / SHORT)
    client = service.client()
    t = service.topology
    gather = t.gather_queue("fake-1")
    declare_gather(client.channel, gather, expires_seconds=60)  # the test plays the coordinator
    one_second = encode_flac(np.zeros(16000, dtype=np.float32))
    headers = task_headers("fake-1")

    publish_raw(client, one_second, {k: v for k, v in headers.items() if k != "x-index"}, gather)
    publish_raw(client, one_second, {**headers, "x-end": -5}, gather)
    publish_raw(client, b"not flac at all", headers, gather)
    publish_raw(client, encode_flac(np.zeros(8000, dtype=np.float32)), headers, gather)  # shorter than it says
    publish_raw(client, one_second, headers, t.jobs_queue)  # a reply_to that is not the job's gather queue
    publish_raw(client, one_second, task_headers("ghost-1"), t.gather_queue("ghost-1"))  # no such job
    publish_raw(client, one_second, {**headers, "x-pieces": [[0, 9000], [8000, 16000]]}, gather)  # overlapping
    publish_raw(client, one_second, {**headers, "x-pieces": [[0, 4000], [8000, 16000]]}, gather)  # 12000 samples

    dead = client.collect(t.chunks_dead_letter_queue, lambda ms: len(ms) == 7, timeout=60)
    codes = sorted(props.headers["x-error-code"] for props, _ in dead)
    assert codes == ["AudioDecodeError"] + ["InvalidChunkTask"] * 6
    replies = [GatherMessage.model_validate_json(body) for _, body in client.drain(gather)]
    assert sorted((r.status, r.error.code) for r in replies) == [
        ("failed", "AudioDecodeError"),
        ("failed", "InvalidChunkTask"),
        ("failed", "InvalidChunkTask"),
    ]
    fan_worker.wait_for("no coordinator gathers job ghost-1")
    assert "| ghost-1 |" in fan_worker.log()  # logged with the job id
    client.channel.queue_delete(gather)
    assert client.depth(t.chunks_queue) == 0

    client.enqueue({"job_id": "after-bad-chunks-1", "audio": {"path": SHORT}})
    exactly_one_completed(client, "after-bad-chunks-1", fan_worker)
    LEDGER.bad_inputs += ["chunk task: missing header", "chunk task: end before start", "chunk task: not FLAC",
                          "chunk task: audio shorter than its span", "chunk task: foreign reply_to",
                          "chunk task: overlapping pieces", "chunk task: audio longer than its pieces"]  # fmt: skip
    client.close()


def test_a_fanned_out_job_longer_than_the_consumer_timeout_completes_once(own_broker, own_service, audio_dir):
    # 10 s: the job (12 chunks one after another on base, about 20 s) and the coordinator's held results pass it;
    # one chunk task must not (it is held while it is transcribed: a slow host or a guard retry took 3 s).
    own_broker.start(**{**SHORT_CONSUMER_TIMEOUT, "config": {"consumer_timeout": "10000"}})
    own_service.topology = dataclasses.replace(own_service.topology, delivery_limit=20)
    shutil.copyfile(audio_dir / LONG, own_service.input_dir / LONG)
    shutil.copyfile(audio_dir / SHORT, own_service.input_dir / SHORT)
    client = own_service.client()
    # Calls one by one on base: tiny.en finished the 12 chunks in 10.7 s on a fast host, too close to the timeout.
    worker = own_service.start_worker(**{**FAN, "whisper_batch_size": 1})
    worker.wait_for("Taking chunk tasks")

    client.enqueue({"job_id": "fan-held-1", "audio": {"path": LONG}, "model": "base"})
    results = exactly_one_completed(client, "fan-held-1", worker)
    assert results[0].chunks == 12
    log = worker.log()
    assert "The broker closed the channel" in log
    assert log.count("Processing job fan-held-1") == 1  # transcribed once; the redelivery got that result
    assert log.count("Fanning out") == 1
    assert_broker_clean(client, "fan-held-1")

    client.enqueue({"job_id": "fan-after-1", "audio": {"path": SHORT}})  # the worker still serves
    exactly_one_completed(client, "fan-after-1", worker)
    LEDGER.faults_survived.append("fanned-out job longer than the broker's consumer_timeout")
    client.close()


def test_chunk_tasks_the_broker_refuses_are_published_again_and_the_job_completes_once(
    own_broker, own_service, audio_dir
):
    # Given a broker that refuses (nacks) chunk tasks: a policy caps the chunk queue at one ready task and
    # rejects publishes past it (a real refusal, as a quorum queue electing its leader gives, for a while)
    own_broker.start()
    shutil.copyfile(audio_dir / LONG, own_service.input_dir / LONG)
    client = own_service.client()
    worker = own_service.start_worker(**FAN)
    worker.wait_for("Taking chunk tasks")
    cap = json.dumps({"max-length": 1, "overflow": "reject-publish"})
    chunks = f"^{re.escape(client.topology.chunks_queue)}$"
    done = ctl(own_broker.running, "set_policy", "--apply-to", "queues", "cap-chunks", chunks, cap)
    assert done.returncode == 0, done.stderr

    # When a long job fans out, and the cap is lifted once the coordinator met a refusal
    client.enqueue({"job_id": "fan-refused-1", "audio": {"path": LONG}})
    worker.wait_for("Gathering interrupted")
    assert ctl(own_broker.running, "clear_policy", "cap-chunks").returncode == 0

    # Then the coordinator resumed on a new connection (the job was not failed as a bug) and the job
    # completed once, with every chunk
    (result,) = exactly_one_completed(client, "fan-refused-1", worker)
    assert result.chunks == 12 and result.attempt == 1
    assert "NACKed" in worker.log()
    assert set(chunk_starts(worker)) == set(range(12))
    assert_broker_clean(client, "fan-refused-1")
    LEDGER.faults_survived.append("chunk tasks refused by the broker (reject-publish)")
    client.close()


def test_workers_side_by_side_on_one_host_need_their_own_metrics_port(service):
    first, second = free_port(), free_port()
    workers = [service.start_worker(**FAN, metrics_port=port) for port in (first, second)]
    for worker in workers:
        worker.wait_for("Taking chunk tasks")
    assert healthz(first) == healthz(second) == 200

    clash = service.start_worker(**FAN, metrics_port=first)  # an operator's copy-paste
    assert clash.process.wait(120) == 2
    assert f":{first} (METRICS_HOST:METRICS_PORT) cannot be served" in clash.log()
    assert healthz(first) == 200  # the first worker is untouched
