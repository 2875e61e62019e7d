"""The docker-compose scenario's harness: the engine and base images, one stack per module, step times.

The shipped docker-compose.yml runs as an operator runs it, with tests/deploy/compose.test.yml on top
for the local base images and the job directories only. COMPOSE_TESTS=0 turns the scenario off; where
Docker cannot run (no engine and no way to start one) it is skipped with the reason, in one line.
"""

import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT

from worker.devtools.containers import BaseImages, Compose, DockerUnavailable, ensure_base_images, ensure_engine
from worker.devtools.local_broker import free_port

HERE = Path(__file__).resolve().parent
ENGINE_LOG = Path("/tmp/transcription-worker-dockerd.log")
FANOUT_MIN_SECONDS = 120  # a long recording fans out over the workers (compose's default is 10 min)
APP_IMAGE = "transcription-worker-test/app:latest"  # what the scenario builds; kept as the next build's cache


@dataclass
class Steps:
    """Wall time of each step of the scenario, printed at the end of the run (docs/operations.md quotes them)."""

    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seconds[name] = time.monotonic() - started


STEPS = Steps()


def pytest_terminal_summary(terminalreporter) -> None:
    if not STEPS.seconds:
        return
    terminalreporter.write_sep("=", "docker-compose")
    for name, seconds in STEPS.seconds.items():
        terminalreporter.write_line(f"{name}: {seconds:.0f} s")
    for name, note in STEPS.notes.items():
        terminalreporter.write_line(f"{name}: {note}")
    terminalreporter.write_line(f"all steps: {sum(STEPS.seconds.values()) / 60:.1f} min")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each test's call report on its node (test_compose prints the containers' logs when it failed)."""
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report


@dataclass
class Stack:
    """One compose project of the shipped file: its secrets (from an env file), ports and directories."""

    compose: Compose
    images: BaseImages
    password: str
    api_key: str
    gateway_port: int
    amqp_port: int
    input_dir: Path
    output_dir: Path

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def amqp_url(self) -> str:
        return f"amqp://transcriber:{self.password}@127.0.0.1:{self.amqp_port}/%2F"


@pytest.fixture(scope="session")
def base_images(tmp_path_factory) -> BaseImages:
    if os.environ.get("COMPOSE_TESTS", "1") == "0":
        pytest.skip("COMPOSE_TESTS=0: the docker-compose scenario is off")
    try:
        ensure_engine(ENGINE_LOG)
        with STEPS.timed("base images (made once per machine, then cached)"):
            return ensure_base_images(HERE / "images", tmp_path_factory.mktemp("base-images"))
    except DockerUnavailable as reason:
        pytest.skip(f"Docker cannot run here: {reason}")


@pytest.fixture(scope="module")
def stack(base_images: BaseImages, tmp_path_factory) -> Iterator[Stack]:
    yield from compose_stack(base_images, tmp_path_factory.mktemp("compose"))


def compose_stack(
    base_images: BaseImages, root: Path, *, files: tuple[Path, ...] = (), secrets_env: str = "", **variables: str
) -> Iterator[Stack]:
    """The shipped file and compose.test.yml (then `files`) as one project, torn down (volumes too) at the end."""
    input_dir, output_dir = root / "input", root / "output"
    for directory in (input_dir, output_dir):
        directory.mkdir()
        if os.geteuid() == 0:  # the image's user writes there
            os.chown(directory, 10001, 0)
        else:
            directory.chmod(0o777)
    password, api_key = secrets.token_hex(16), f"sk-{secrets.token_hex(12)}"
    env_file = root / "compose.env"  # as deploy/compose.env.example asks an operator to write .env
    env_file.write_text(f"RABBITMQ_DEFAULT_PASS={password}\nGATEWAY_API_KEYS={api_key}\n{secrets_env}")
    gateway_port, amqp_port = free_port(), free_port()
    compose = Compose(
        project=f"twtest{uuid.uuid4().hex[:8]}",
        directory=ROOT,
        files=[ROOT / "docker-compose.yml", HERE / "compose.test.yml", *files],
        env_file=env_file,
        variables={
            "TEST_PYTHON_IMAGE": base_images.python,
            "TEST_RABBITMQ_IMAGE": base_images.rabbitmq,
            "TEST_APP_IMAGE": APP_IMAGE,
            "TEST_INPUT_DIR": str(input_dir),
            "TEST_OUTPUT_DIR": str(output_dir),
            "GATEWAY_PUBLISHED_PORT": str(gateway_port),
            "AMQP_PORT": str(amqp_port),
            "MANAGEMENT_PORT": str(free_port()),
            "FANOUT_MIN_SECONDS": str(FANOUT_MIN_SECONDS),
            **variables,
        },
    )
    yield Stack(compose, base_images, password, api_key, gateway_port, amqp_port, input_dir, output_dir)
    compose.run("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
