"""The reliability suite's harness: worker processes, the test's broker client, and the ledger.

Everything here is real: `cmd/consumer/main.py` runs as a subprocess against a real
rabbitmq-server on 127.0.0.1, and the HTTP servers the tests need are started on 127.0.0.1.
After every test the workers are stopped and their scratch space must be empty.
"""

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import OwnBroker, Service, new_topology, stop_and_check

# --- the figures the suite prints at the end (and docs/reliability.md quotes) ---


@dataclass
class Ledger:
    faults_survived: list[str] = field(default_factory=list)
    bad_inputs: list[str] = field(default_factory=list)
    hostile_gateway: list[str] = field(default_factory=list)
    hostile_queue: list[str] = field(default_factory=list)
    forbidden_outbound: int = 0  # requests the hostile suite's trap server recorded
    jobs_under_load: int = 0
    load_jobs_per_minute: float | None = None
    jobs_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    failovers: list[tuple[str, float]] = field(default_factory=list)  # (what, seconds until it served again)

    def account(self, expected: set[str], completed: list[str]) -> None:
        """Count lost and duplicated results: `completed` holds one job id per completed result."""
        self.jobs_checked += len(expected)
        self.lost += len(expected - set(completed))
        self.duplicated += len(completed) - len(set(completed))


LEDGER = Ledger()


def pytest_terminal_summary(terminalreporter) -> None:
    ledger = LEDGER
    if not (ledger.faults_survived or ledger.bad_inputs or ledger.jobs_under_load or ledger.hostile_gateway):
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "reliability")
    write(f"faults survived: {len(ledger.faults_survived)} ({', '.join(ledger.faults_survived)})")
    if ledger.jobs_under_load:
        write(
            f"jobs under load: {ledger.jobs_under_load}, 2 worker processes, {ledger.load_jobs_per_minute:.1f} jobs/min"
        )
    write(f"bad inputs tried: {len(ledger.bad_inputs)}, each failed with its error code and dead-lettered")
    if ledger.hostile_gateway or ledger.hostile_queue:
        write(
            f"hostile requests: {len(ledger.hostile_gateway)} at the gateway, {len(ledger.hostile_queue)} on the "
            f"jobs queue, each answered typed; forbidden outbound requests recorded: {ledger.forbidden_outbound}"
        )
    if ledger.failovers:
        resumed = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in ledger.failovers)
        write(f"broker node failovers (3-node cluster), serving again after: {resumed}")
    write(
        f"jobs checked for exactly one result: {ledger.jobs_checked}; lost = {ledger.lost}, "
        f"duplicated = {ledger.duplicated}"
    )


@pytest.fixture
def service(broker, tmp_path, audio_dir) -> Iterator[Service]:
    """A fresh topology and directories on the session's broker; workers started through it."""
    svc = Service(broker_url=broker, root=tmp_path, topology=new_topology())
    svc.input_dir.mkdir()
    yield svc
    stop_and_check(svc)


# --- a broker of the test's own, for faults that stop or delay the broker ---


@pytest.fixture
def own_broker() -> Iterator[OwnBroker]:
    """Not started: the test decides when. Its AMQP password is a fresh secret."""
    base = Path(tempfile.mkdtemp(prefix="worker-rabbitmq-own-"))
    broker = OwnBroker(base, user="transcriber", password=f"pw-{uuid.uuid4().hex}")
    yield broker
    broker.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def own_service(own_broker, tmp_path, audio_dir) -> Iterator[Service]:
    """Like `service`, on the test's own broker (which the test starts)."""
    svc = Service(broker_url=own_broker.url, root=tmp_path, topology=new_topology())
    svc.input_dir.mkdir()
    yield svc
    stop_and_check(svc)


def assert_no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, "the AMQP password leaked"
