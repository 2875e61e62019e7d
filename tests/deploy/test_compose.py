"""docker-compose for real: the shipped file's images built and the stack run end to end, as an operator
would run it, through its published ports and from a client container.

The steps run in order on one stack (a module fixture) and each records its wall time (printed at the
end of the run). They need a Docker engine: conftest starts dockerd when none answers, or skips.
"""

import json
import re
import shutil
import subprocess
import time

import jiwer
import pika
import pytest
import requests
from conftest import normalize, reference
from harness import Client, completed_ids
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from worker import wiring
from worker.config import Settings
from worker.devtools.containers import docker, image_size_mb
from worker.media.audio import DEMUXERS

from . import corpus
from .conftest import FANOUT_MIN_SECONDS, STEPS, Stack

JFK = "jfk_inaugural_1961.flac"
LONG = "ljspeech_LJ001-0001_to_0032_concat.wav"  # 231 s: fans out (over FANOUT_MIN_SECONDS)
SERVICES = ("rabbitmq", "worker", "gateway")
MARKER = "compose-test-marker"
CHUNKS_DONE = "transcription_chunk_tasks_total"


def topology():
    return wiring.topology(Settings(_env_file=None, fanout_min_seconds=FANOUT_MIN_SECONDS))


def exact(text: str, audio_dir, name: str = JFK) -> bool:
    return jiwer.wer(normalize(reference(audio_dir, name)), normalize(text)) == 0


def job_lines(stack: Stack, container: str, job_id: str) -> list[str]:
    return [line for line in stack.compose.logs(container).splitlines() if f"| {job_id} |" in line]


def wait_for_log(stack: Stack, service: str, job_id: str, text: str, timeout: float = 300.0) -> str:
    """The container of `service` whose log shows `text` for the job first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for container in stack.compose.containers(service):
            if any(text in line for line in job_lines(stack, container, job_id)):
                return container
        time.sleep(0.5)
    raise AssertionError(f"no {service} logged {text!r} for {job_id} within {timeout:.0f} s")


def metric(container: str, name: str, labels: dict[str, str]) -> float:
    """A sample of the worker's /metrics, read inside its container (no port is published for it)."""
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())"
    samples = (
        s for f in text_string_to_metric_families(docker("exec", container, "python", "-c", script)) for s in f.samples
    )
    return next((s.value for s in samples if s.name == name and s.labels == labels), 0.0)


def enqueue_path(stack: Stack, client: Client, job_id: str, name: str, audio_dir) -> None:
    """A job whose audio is a file in the workers' input directory, as upstream services drop them."""
    target = stack.input_dir / job_id / name
    target.parent.mkdir()
    shutil.copyfile(audio_dir / name, target)
    shutil.chown(target.parent, 10001, 0)
    client.enqueue({"job_id": job_id, "audio": {"path": f"{job_id}/{name}"}})


def results_once(stack: Stack, job_ids: set[str], timeout: float = 600.0, url: str | None = None) -> list[str]:
    """The completed results of `job_ids` read from the results queue (a new connection each try, so
    that a broker restart costs a retry), then what else arrives in a settling period."""
    deadline, completed = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            client = Client(url or stack.amqp_url, topology())
        except Exception:  # the broker restarting: try again
            time.sleep(2.0)
            continue
        try:
            while not job_ids <= set(completed) and time.monotonic() < deadline:
                results = client.results(lambda rs: bool(rs), timeout=max(1.0, deadline - time.monotonic()))
                completed += completed_ids(results)
            completed += [json.loads(body)["job_id"] for _, body in client.drain(topology().results_queue, 5.0)]
            return completed
        except Exception:
            time.sleep(2.0)
        finally:
            client.close()
    raise AssertionError(f"results of {sorted(job_ids - set(completed))} not in within {timeout:.0f} s")


def test_the_image_builds_small_without_build_tools_and_runs_as_a_user(stack: Stack):
    with STEPS.timed("docker-compose build (worker and gateway, one image)"):
        stack.compose.run("build", timeout=3600)
    image = stack.compose.variables["TEST_APP_IMAGE"]
    STEPS.notes["image size"] = f"{image_size_mb(image):.0f} MB"
    probe = "import importlib.util as u, shutil, os; print(os.getuid(), [t for t in ('gcc', 'cc', 'make', 'cmake') if shutil.which(t)], [m for m in ('pytest', 'jiwer', 'faster_whisper') if u.find_spec(m)])"
    out = docker("run", "--rm", image, "python", "-c", probe).strip()
    assert out == "10001 [] []", out  # not root, no compilers, no test or bench packages


def test_the_images_ffmpeg_decodes_as_the_hosts_and_holds_only_the_whitelisted_containers(
    stack: Stack, audio_dir, tmp_path
):
    """The image's own ffmpeg (Dockerfile, deploy/image/ffmpeg.sh): every container the worker reads and every
    shared recording decode to the very samples the host's full Debian ffmpeg gives, and each refusal keeps its
    error class; the binary holds the whitelisted demuxers and no video decoder."""
    image = stack.compose.variables["TEST_APP_IMAGE"]
    files = tmp_path / "corpus"
    files.mkdir()
    corpus.make(files, audio_dir)
    expected = corpus.decoded_on_host(files)
    in_image = json.loads(
        docker("run", "--rm", "-v", f"{files}:/corpus:ro", image, "python", "-c", corpus.PROBE, "/corpus")
    )
    assert in_image == expected
    assert sum(isinstance(v, int) for v in expected.values()) >= len(corpus.ENCODED) + 5  # not all refused

    demuxers = docker("run", "--rm", image, "ffmpeg", "-hide_banner", "-demuxers")
    names = {n for line in demuxers.splitlines()[4:] for n in line.split()[1].split(",")}
    assert set(DEMUXERS.split(",")) <= names and "hls" not in names and "concat" not in names, names
    decoders = docker("run", "--rm", image, "ffmpeg", "-hide_banner", "-decoders").split("------", 1)[1]
    assert not [line for line in decoders.splitlines() if line.startswith(" V")], "video decoders in its ffmpeg"


def test_up_waits_for_a_healthy_broker_and_every_service_turns_healthy(stack: Stack):
    with STEPS.timed("up -d to all healthy (first start: models converted onto the empty volume)"):
        stack.compose.run("up", "-d")
        stack.compose.wait_healthy(SERVICES, timeout=600)
    (broker,) = stack.compose.containers("rabbitmq")
    # the mounted deploy/rabbitmq/20-transcription.conf is the broker's: consumer_timeout above a long job
    timeout = docker("exec", broker, "rabbitmqctl", "eval", "application:get_env(rabbit, consumer_timeout).")
    assert timeout.strip() == "{ok,21600000}", timeout
    broker_started = json.loads(docker("inspect", broker))[0]["State"]["StartedAt"]
    for service in ("worker", "gateway"):
        (container,) = stack.compose.containers(service)
        started = json.loads(docker("inspect", container))[0]["State"]["StartedAt"]
        assert started > broker_started, (service, started, broker_started)  # RFC 3339, both UTC
        # depends_on: service_healthy held it back until the broker answered: it never had to retry
        assert "Broker unavailable" not in stack.compose.logs(container), service
    # The image's engine says which x86-64 level's kernels ggml chose for this CPU (loader.py), at INFO.
    (worker,) = stack.compose.containers("worker")
    backend = re.search(r"ggml loaded its CPU backend: (libggml-cpu-\w+\.so)", stack.compose.logs(worker))
    assert backend, "the worker does not say which CPU backend ggml loaded"
    STEPS.notes["CPU backend ggml chose in the image"] = backend[1]


def test_the_gateway_answers_the_openai_client_and_curl_and_workers_fetch_its_uploads(stack: Stack, audio_dir):
    client = OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=stack.api_key, max_retries=0, timeout=300)
    with STEPS.timed("openai client: JFK through the gateway"):
        with open(audio_dir / JFK, "rb") as audio:
            text = client.audio.transcriptions.create(model="whisper-1", file=audio).text
    # The gateway spooled the upload and published a job naming http://gateway:8000/uploads/...: the
    # worker fetched it by the service name (the only private origin it may reach).
    assert exact(text, audio_dir), text
    with STEPS.timed("curl: JFK through the gateway"):
        out = subprocess.run(
            [
                "curl",
                "-sf",
                "-H",
                f"Authorization: Bearer {stack.api_key}",
                "-F",
                f"file=@{audio_dir / JFK}",
                "-F",
                "model=whisper-1",
                "-F",
                "response_format=json",
                f"{stack.gateway_url}/v1/audio/transcriptions",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
    assert exact(json.loads(out)["text"], audio_dir)
    no_key = requests.post(f"{stack.gateway_url}/v1/audio/transcriptions", timeout=10)
    assert no_key.status_code == 401


def test_a_queue_job_from_a_client_container_by_service_name(stack: Stack, audio_dir):
    with STEPS.timed("cmd/enqueue in a client container (compose run)"):
        done = stack.compose.run(
            "run",
            "--rm",
            "--no-deps",
            "-v",
            f"{audio_dir / JFK}:/tmp/{JFK}:ro",
            "worker",
            "python",
            "cmd/enqueue/main.py",
            f"/tmp/{JFK}",
            "--wait",
            "--format",
            "txt",
            "--timeout",
            "300",
        )
    assert exact(done.stdout, audio_dir), done.stdout + done.stderr


def test_three_workers_share_a_long_recording(stack: Stack, audio_dir):
    with STEPS.timed("--scale worker=3 to healthy"):
        stack.compose.run("up", "-d", "--scale", "worker=3")
        stack.compose.wait_healthy(["worker"], timeout=300)
    workers = stack.compose.containers("worker")
    assert len(workers) == 3
    before = {w: metric(w, CHUNKS_DONE, {"status": "completed"}) for w in workers}
    client = Client(stack.amqp_url, topology())
    with STEPS.timed("a 231 s recording fanned out over 3 workers"):
        enqueue_path(stack, client, "long-1", LONG, audio_dir)
        results = client.results(lambda rs: "long-1" in completed_ids(rs), timeout=900)
    client.close()
    (result,) = [r for r in results if r.job_id == "long-1"]
    assert jiwer.wer(normalize(reference(audio_dir, LONG)), normalize(result.text)) < 0.1
    took = {w: metric(w, CHUNKS_DONE, {"status": "completed"}) - before[w] for w in workers}
    STEPS.notes["chunk tasks per worker"] = ", ".join(f"{int(n)}" for n in took.values())
    assert all(n > 0 for n in took.values()), took  # every worker container transcribed chunks
    assert (stack.output_dir / "long-1").is_dir()


def test_a_worker_killed_and_the_broker_restarted_mid_job_lose_nothing_and_duplicate_nothing(stack: Stack, audio_dir):
    client = Client(stack.amqp_url, topology())
    with STEPS.timed("docker kill of the coordinating worker mid-job, job completed once"):
        enqueue_path(stack, client, "killed-1", LONG, audio_dir)
        coordinator = wait_for_log(stack, "worker", "killed-1", "Fanning out")
        docker("kill", coordinator)
        client.close()
        killed = results_once(stack, {"killed-1"})
    assert killed.count("killed-1") == 1, killed
    stack.compose.run("up", "-d", "--scale", "worker=3")  # the killed one back
    stack.compose.wait_healthy(["worker"], timeout=300)

    client = Client(stack.amqp_url, topology())
    (broker,) = stack.compose.containers("rabbitmq")
    with STEPS.timed("docker restart of the broker mid-job, job completed once"):
        enqueue_path(stack, client, "restarted-1", LONG, audio_dir)
        wait_for_log(stack, "worker", "restarted-1", "Fanning out")
        client.close()
        docker("restart", broker)
        restarted = results_once(stack, {"restarted-1"})
    assert restarted.count("restarted-1") == 1, restarted
    stack.compose.wait_healthy(SERVICES, timeout=300)


def test_volumes_keep_models_transcripts_and_jobs_across_down_and_up(stack: Stack, audio_dir):
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with open(audio_dir / JFK, "rb") as audio:
        job = requests.post(f"{stack.gateway_url}/v1/jobs", headers=headers, files={"file": audio}, timeout=60).json()
    deadline = time.monotonic() + 300
    while (record := requests.get(f"{stack.gateway_url}/v1/jobs/{job['id']}", headers=headers, timeout=10).json())[
        "state"
    ] not in ("completed", "failed"):
        assert time.monotonic() < deadline, record
        time.sleep(0.5)
    transcripts = sorted(p.name for p in stack.output_dir.iterdir())
    marker = Client(stack.amqp_url, topology())  # a job left on a queue of the broker's volume
    marker.channel.queue_declare(MARKER, durable=True, arguments={"x-queue-type": "quorum"})
    marker.channel.basic_publish("", MARKER, b"{}", pika.BasicProperties(delivery_mode=2))
    marker.close()
    with STEPS.timed("down, then up -d to all healthy (volumes kept)"):
        stack.compose.run("down", "--timeout", "30")
        assert stack.compose.resources()["containers"] == []
        stack.compose.run("up", "-d")
        stack.compose.wait_healthy(SERVICES, timeout=300)
    (worker,) = stack.compose.containers("worker")
    log = stack.compose.logs(worker)
    assert "Model already exists and is valid" in log and "Converting model" not in log  # the models volume
    again = requests.get(f"{stack.gateway_url}/v1/jobs/{job['id']}", headers=headers, timeout=10).json()
    assert again == record and exact(record["result"]["text"], audio_dir)  # the gateway's database volume
    assert sorted(p.name for p in stack.output_dir.iterdir()) == transcripts
    # the broker's volume: the new container is the same node (its hostname), with its queues and messages
    marker = Client(stack.amqp_url, topology())
    assert marker.depth(MARKER) == 1
    marker.close()


def test_down_v_leaves_nothing_running_and_no_volume(stack: Stack):
    with STEPS.timed("down -v"):
        stack.compose.run("down", "-v", "--timeout", "30")
    assert stack.compose.resources() == {"containers": [], "networks": [], "volumes": []}
    assert not re.search(stack.compose.project, docker("ps", "-a", "--format", "{{.Names}}"))


@pytest.fixture(autouse=True)
def _stack_logs_on_failure(request, stack: Stack):
    """A failed step prints the tail of every container's log (the stack is gone after the module)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for service in SERVICES:
            for container in stack.compose.containers(service):
                print(f"--- {service} {container}\n{stack.compose.logs(container)[-4000:]}")
