"""A private rabbitmq-server on 127.0.0.1 for tests and `make run` (not used by the service itself).

Debian's rabbitmq-server refuses to run as root, so as root it runs as user `rabbitmq`, with
data, log and HOME (Erlang cookie) directories of its own under `base_dir`, a free AMQP port
and a free distribution port: it never touches a system broker.

    python -m worker.devtools.local_broker start DIR    # prints the AMQP URL, leaves the broker running
    python -m worker.devtools.local_broker stop DIR

`start_cluster` starts several such nodes joined in one cluster (one Erlang cookie; the later nodes
find the first by classic peer discovery), for the failover tests: a node can be killed, restarted
and paused (SIGSTOP) on its own.
"""

import json
import logging
import os
import pwd
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pika

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
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


@dataclass
class LocalCluster:
    """Nodes of one cluster on 127.0.0.1; `url` names them all (AMQP_URL's `;` form)."""

    nodes: list[LocalBroker]
    options: dict  # start()'s keyword arguments, for restarts

    @property
    def url(self) -> str:
        return ";".join(node.url for node in self.nodes)

    def index_of(self, port: int) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.port == port)

    def kill(self, index: int) -> None:
        """SIGKILL the node's process group, as a crash would (its clients see their sockets reset)."""
        node = self.nodes[index]
        with _suppress_missing():
            os.killpg(node.pid, signal.SIGKILL)
        while _alive(node.pid):
            time.sleep(0.05)

    def restart(self, index: int) -> None:
        """Start the node again (it rejoins the cluster with its data); stop it first if it runs."""
        node = self.nodes[index]
        node.stop()
        self.nodes[index] = start(node.base_dir, port=node.port, **self.options)

    def pause(self, index: int, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the node: its sockets stay open and nothing answers, as in a partition."""
        os.killpg(self.nodes[index].pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def revive(self) -> None:
        """Every node running again: paused ones resumed, dead ones started (what a test left behind)."""
        for index, node in enumerate(self.nodes):
            if _alive(node.pid):
                self.pause(index, False)
            else:
                self.restart(index)

    def stop(self) -> None:
        for index in range(len(self.nodes)):
            with _suppress_missing():
                os.killpg(self.nodes[index].pid, signal.SIGCONT)
            self.nodes[index].stop()


def start_cluster(base_dir: Path, size: int = 3, **options) -> LocalCluster:
    """`size` nodes under base_dir/node-N, joined in one cluster; `options`: start()'s (user, config, ...)."""
    base_dir = Path(base_dir).resolve()
    _give_to_rabbitmq([base_dir])  # the nodes' directories are inside it
    cookie = secrets.token_hex(16)
    ports = [free_port() for _ in range(size)]
    nodes: list[LocalBroker] = []
    try:
        for index, port in enumerate(ports):
            node_dir = base_dir / f"node-{index}"
            home = node_dir / "home"
            home.mkdir(parents=True, exist_ok=True)
            (home / ".erlang.cookie").write_text(cookie)
            (home / ".erlang.cookie").chmod(0o400)  # Erlang refuses a cookie others can read
            config = dict(options.get("config") or {})
            if index:  # a fresh node joins the first one (a restarted node rejoins from its own data)
                config["cluster_formation.peer_discovery_backend"] = "classic_config"
                config["cluster_formation.classic_config.nodes.1"] = _node_name(ports[0])
            nodes.append(start(node_dir, port=port, **{**options, "config": config}))
        if not rejoined(nodes[0], size, timeout=60):
            raise RuntimeError(f"the {size} nodes did not form one cluster: {cluster_status(nodes[0])}")
    except Exception:
        for node in nodes:
            node.stop()
        raise
    return LocalCluster(nodes, options)


def ctl(node: LocalBroker, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`rabbitmqctl ARGS` against `node` (as user rabbitmq when root: the server runs as it)."""
    env = {**os.environ, "HOME": str(node.base_dir / "home")}  # the node's Erlang cookie
    command = [CTL, "-n", _node_name(node.port), *args]
    user = "rabbitmq" if os.geteuid() == 0 else None
    # cwd: the node's own directory, which user rabbitmq can enter (the caller's may be private to root).
    return subprocess.run(
        command, env=env, cwd=node.base_dir, capture_output=True, text=True, timeout=timeout, user=user
    )


def cluster_status(node: LocalBroker) -> dict | None:
    """`rabbitmqctl cluster_status` of `node` (its JSON), or None when the node does not answer."""
    done = ctl(node, "cluster_status", "--formatter", "json")
    try:
        return json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:  # not JSON: a node still starting, or a warning on stdout
        return None


def rejoined(node: LocalBroker, size: int, *, timeout: float) -> bool:
    """Whether `node` runs with all `size` nodes of its cluster and sees no partition, within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster_status(node)
        if status and len(status.get("running_nodes", [])) == size and not status.get("partitions"):
            return True
        time.sleep(1.0)
    return False


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
    as_rabbitmq = _give_to_rabbitmq([base_dir, *base_dir.rglob("*")])
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
        "RABBITMQ_NODENAME": _node_name(port),
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(base_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base_dir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_CONFIG_FILE": str(base_dir / "rabbitmq"),  # rabbitmq.conf, may be absent
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def _give_to_rabbitmq(paths: list[Path]) -> bool:
    """As root, make user rabbitmq own `paths` (the server runs as it); True when it does."""
    if os.geteuid() != 0:
        return False
    owner = pwd.getpwnam("rabbitmq")
    for path in paths:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return True


def _node_name(port: int) -> str:
    return f"worker-test-{port}@localhost"


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
