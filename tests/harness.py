"""What the suites that run real worker processes share: the processes, the test's broker client,
a service under test (topology, directories, workers).

Everything here is real: `cmd/consumer/main.py` runs as a subprocess against a real
rabbitmq-server on 127.0.0.1.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
from conftest import MODELS_DIR, ROOT

from worker.devtools import local_broker
from worker.devtools.topology_env import topology_env
from worker.messages import Result
from worker.service.publisher import Topology, declare, publish_job

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Every process a test starts: a developer's .env in the project root (their cwd) is not read.
NO_ENV_FILE = {"ENV_FILE": ""}


# --- worker processes ---


class WorkerProcess:
    """`python cmd/consumer/main.py` with its output in a log file (run in the project root unless `cwd`)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, cwd: Path = ROOT) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "cmd" / "consumer" / "main.py")],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 120.0) -> None:
        """Wait until `text` has appeared `count` times in the log; fails if the worker exits first."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert self.process.poll() is None, (
                f"worker exited ({self.process.returncode}) first:\n{self.log()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"{text!r} x{count} not logged in {timeout} s:\n{self.log()[-3000:]}"
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def stop(self, timeout: float = 180.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
                raise AssertionError(f"worker did not stop within {timeout} s:\n{self.log()[-3000:]}") from None
        return self.process.returncode


# --- the test's own broker client ---


class Client:
    """Publishes jobs and reads results and dead letters, as upstream and downstream services do."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.topology = topology
        self._url = url
        self._connect()

    def _connect(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self._url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        declare(self.channel, self.topology)

    def enqueue(self, job: dict | bytes, *, message_id: str | None = None, interactive: bool = False) -> str:
        body = job if isinstance(job, bytes) else json.dumps(job).encode()
        job_id = message_id or job["job_id"]
        publish_job(self.channel, self.topology, body, job_id, published_at=time.time(), interactive=interactive)
        return job_id

    def get(self, queue: str) -> tuple[pika.BasicProperties, bytes] | None:
        """A message from `queue`, or None. On a cluster, a quorum queue whose leader just died closes the
        connection of a basic.get (541 nodedown) until it has a new one, and autoheal may restart the node
        this client is on: connect again and ask again."""
        for _ in range(30):
            try:
                if not self.channel.is_open:
                    self._connect()
                method, properties, body = self.channel.basic_get(queue, auto_ack=True)
                return None if method is None else (properties, body)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
                time.sleep(1.0)
                self.close()
        raise AssertionError(f"{queue}: no answer from the broker in 30 attempts")

    def collect(
        self,
        queue: str,
        until: Callable[[list], bool],
        *,
        timeout: float = 300.0,
        alive: Callable[[], None] = lambda: None,
    ) -> list[tuple[pika.BasicProperties, bytes]]:
        """Messages taken from `queue` until `until(messages)` holds; fails after `timeout`."""
        messages: list = []
        deadline = time.monotonic() + timeout
        while not until(messages):
            assert time.monotonic() < deadline, f"{queue}: condition not met in {timeout} s; got {len(messages)}"
            message = self.get(queue)
            if message is None:
                alive()
                self._pause(0.2)
            else:
                messages.append(message)
        return messages

    def results(self, until: Callable[[list[Result]], bool], **kwargs) -> list[Result]:
        collected: list[Result] = []

        def done(messages: list) -> bool:
            collected[:] = [Result.model_validate_json(body) for _, body in messages]
            return until(collected)

        self.collect(self.topology.results_queue, done, **kwargs)
        return collected

    def drain(self, queue: str, settle_seconds: float = 1.0) -> list[tuple[pika.BasicProperties, bytes]]:
        """Everything on `queue` now, after waiting `settle_seconds` for stragglers."""
        self._pause(settle_seconds)
        messages = []
        while (message := self.get(queue)) is not None:
            messages.append(message)
        return messages

    def _pause(self, seconds: float) -> None:
        """Wait, serving the connection; one the broker closed meanwhile is opened again by the next get()."""
        try:
            self.connection.sleep(seconds)
        except pika.exceptions.AMQPError:
            time.sleep(seconds)

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def close(self) -> None:
        if self.connection.is_open:
            try:
                self.connection.close()
            except pika.exceptions.AMQPError:
                pass  # already going


def completed_ids(results: list[Result]) -> list[str]:
    return [r.job_id for r in results if r.status == "completed"]


# --- one service under test: topology, directories, workers ---


@dataclass
class Service:
    broker_url: str
    root: Path
    topology: Topology
    models_dir: Path = MODELS_DIR
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    def env(self, **overrides: str | int | float) -> dict[str, str]:
        env = {
            **os.environ,
            **topology_env(self.topology),
            **NO_ENV_FILE,
            "LOG_LEVEL": "INFO",
            "AMQP_URL": self.broker_url,
            "INPUT_DIR": str(self.input_dir),
            "OUTPUT_DIR": str(self.output_dir),
            "WORK_DIR": str(self.work_dir),
            "WHISPER_MODELS_DIR": str(self.models_dir),
            "WHISPER_DOWNLOAD_URL": "",
            "METRICS_PORT": "0",
            "GATEWAY_METRICS_PORT": "0",  # several gateways on this host: /metrics only where a test asks
            "RETRY_BACKOFF_SECONDS": "0.2",
            "RECONNECT_MAX_SECONDS": "2",
        }
        env.update({key.upper(): str(value) for key, value in overrides.items()})
        return env

    def start_worker(self, *, cwd: Path = ROOT, **overrides: str | int | float) -> WorkerProcess:
        worker = WorkerProcess(self.env(**overrides), self.root / f"worker-{len(self.workers)}.log", cwd=cwd)
        self.workers.append(worker)
        return worker

    def client(self) -> Client:
        return Client(self.broker_url, self.topology)

    def leftovers(self) -> list[Path]:
        """Scratch files still on disk: anything under WORK_DIR, staged outputs or model parts."""
        scratch = [p for p in self.work_dir.rglob("*")] if self.work_dir.exists() else []
        staged = [*self.output_dir.rglob("*.tmp"), *self.models_dir.glob(".*.part")]
        return scratch + staged


def new_topology(delivery_limit: int = 3) -> Topology:
    tag = uuid.uuid4().hex[:8]
    return Topology(
        jobs_queue=f"jobs.{tag}",
        results_queue=f"results.{tag}",
        dead_letter_exchange=f"dlx.{tag}",
        dead_letter_queue=f"dead.{tag}",
        progress_exchange=f"progress.{tag}",
        delivery_limit=delivery_limit,
        chunks_queue=f"chunks.{tag}",
        chunks_dead_letter_queue=f"chunks.dead.{tag}",
        interactive_queue=f"interactive.{tag}",
    )


def stop_and_check(service: Service) -> None:
    """Stop every worker (SIGTERM, exit 0), then require that no scratch file is left behind."""
    codes = [worker.stop() for worker in service.workers if worker.process.returncode is None]
    assert all(code == 0 for code in codes), f"a worker exited with {codes}"
    assert service.leftovers() == [], "scratch files left behind"


# --- gateway processes ---


@dataclass
class GatewayProcess:
    """`python cmd/gateway/main.py` with its output in a log file."""

    url: str
    env: dict[str, str]
    log_path: Path
    upload_dir: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it publishes (start-up waits for the broker) and listens."""
        expected = self.log().count("Uvicorn running on") + 1
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "cmd/gateway/main.py"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while self.log().count("Uvicorn running on") < expected or self.log().count("Publishing to") < expected:
            assert self.alive() and time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def gateway_env(service: Service, port: int, root: Path, **overrides: str | int | float) -> dict[str, str]:
    """A gateway's environment beside `service`'s workers: its own port, uploads, database and results queue."""
    env = service.env(gateway_port=port, gateway_upload_dir=root / "uploads", **overrides)
    env["GATEWAY_DATABASE_URL"] = f"sqlite:///{root / 'jobs.sqlite3'}"
    env["GATEWAY_RESULTS_QUEUE"] = f"gateway-results.{port}"
    return env


# --- a broker of a test's own ---


class OwnBroker:
    """A private rabbitmq-server that a test may stop and start again on the same port."""

    def __init__(self, base: Path, user: str, password: str) -> None:
        self.base, self.user, self.password = base, user, password
        self.port = local_broker.free_port()
        self.running: local_broker.LocalBroker | None = None

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/%2F"

    def start(self, **settings) -> None:
        """`settings`: local_broker.start's `config` and `advanced` (broker settings of the test's own)."""
        self.running = local_broker.start(self.base, port=self.port, user=self.user, password=self.password, **settings)

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None
