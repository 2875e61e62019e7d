"""A private rabbitmq-server on 127.0.0.1 for tests and `make run` (not used by the service itself).

Debian's rabbitmq-server refuses to run as root, so as root it runs as user `rabbitmq`, with
data, log and HOME (Erlang cookie) directories of its own under `base_dir`, a free AMQP port
and a free distribution port: it never touches a system broker.

    python -m worker.devtools.local_broker start DIR    # prints the AMQP URL, leaves the broker running
    python -m worker.devtools.local_broker stop DIR
"""

import logging
import os
import pwd
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pika

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# What deploy/rabbitmq/20-transcription.conf gives the compose broker (tests/test_deployment.py
# checks they agree): a consumer_timeout above the longest job.
DEFAULT_CONFIG = {"consumer_timeout": "21600000"}


@dataclass(frozen=True)
class LocalBroker:
    base_dir: Path
    port: int
    pid: int
    user: str = "guest"
    password: str = "guest"

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/%2F"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker's process group and wait for it."""
        with _suppress_missing():
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(self.pid):
            time.sleep(0.1)
        with _suppress_missing():
            os.killpg(self.pid, signal.SIGKILL)
        (self.base_dir / "broker.json").unlink(missing_ok=True)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # reap it if it is our child
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


# Ports below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by default). A port
# from inside it can be taken by any outgoing connection's local end while its server is down (a
# worker reconnecting to a broker being restarted can even connect to itself), and the restarted
# server then fails with eaddrinuse: seen in CI.
_PORTS = range(20000, 32000)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, outside the ephemeral range when possible."""
    for port in random.sample(_PORTS, 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(url: str, timeout: float = 2.0) -> bool:
    """True when an AMQP broker answers at `url`."""
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.connection_attempts = 1
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)  # a refused connection is the expected answer here
    try:
        pika.BlockingConnection(parameters).close()
        return True
    except pika.exceptions.AMQPError:
        return False
    finally:
        pika_logger.setLevel(level)


def start(
    base_dir: Path,
    *,
    port: int | None = None,
    user: str = "guest",
    password: str = "guest",
    timeout: float = 90.0,
    config: dict[str, str] | None = None,
    advanced: str | None = None,
) -> LocalBroker:
    """Start a private broker and wait until it accepts AMQP connections.

    Starting again with the same `base_dir` and `port` restarts the same node, with the
    durable queues and persistent messages it had. Other credentials than guest's become
    the node's default user when it first starts. `config`: more rabbitmq.conf settings (say
    `consumer_timeout`); `advanced`: an advanced.config term (say a shorter `channel_tick_interval`,
    the period of the broker's consumer-timeout check).
    """
    base_dir = Path(base_dir).resolve()
    port = port or free_port()
    env = _environment(base_dir, port)
    settings = dict(config or {})
    if (user, password) != ("guest", "guest"):
        settings.update(default_user=user, default_pass=password)
    if settings:
        (base_dir / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    if advanced is not None:
        (base_dir / "advanced.config").write_text(advanced)
        env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(base_dir / "advanced.config")
    as_rabbitmq = os.geteuid() == 0
    if as_rabbitmq:
        owner = pwd.getpwnam("rabbitmq")
        for path in [base_dir, *base_dir.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    log = open(base_dir / "server.out", "ab")
    process = subprocess.Popen(
        [SERVER],
        env=env,
        cwd=base_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        user="rabbitmq" if as_rabbitmq else None,
    )
    broker = LocalBroker(base_dir=base_dir, port=port, pid=process.pid, user=user, password=password)
    deadline = time.monotonic() + timeout
    while not reachable(broker.url, timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            broker.stop()
            tail = (base_dir / "server.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"rabbitmq-server did not start on port {port}:\n{tail}")
        time.sleep(0.5)
    (base_dir / "broker.json").write_text(f'{{"port": {port}, "pid": {process.pid}}}\n')
    return broker


def _environment(base_dir: Path, port: int) -> dict[str, str]:
    for sub in ("mnesia", "log", "home"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    plugins = base_dir / "enabled_plugins"
    plugins.write_text("[].\n")
    return {
        **os.environ,
        "HOME": str(base_dir / "home"),
        "RABBITMQ_NODENAME": f"worker-test-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(base_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base_dir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_CONFIG_FILE": str(base_dir / "rabbitmq"),  # rabbitmq.conf, may be absent
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def _main(argv: list[str]) -> int:
    import json

    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    base_dir = Path(argv[1])
    base_dir.mkdir(parents=True, exist_ok=True)
    if argv[0] == "start":
        print(start(base_dir, config=DEFAULT_CONFIG).url)
        return 0
    state = base_dir / "broker.json"
    if state.is_file():
        info = json.loads(state.read_text())
        LocalBroker(base_dir.resolve(), info["port"], info["pid"]).stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
