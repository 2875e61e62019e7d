"""Docker for the compose tests (tests/deploy): an engine that answers, the local base images, compose.

No container registry is reachable here, so the images that docker-compose.yml builds from are made
locally, once, and kept in the engine's image store under this project's own names (never an upstream
tag); the tag carries a digest of what made it, so a changed recipe makes a new image:
- DEBIAN: Debian bookworm (debootstrap --variant=minbase from the host's apt mirror), `docker import`ed;
- python: Debian's python3 and venv on it (tests/deploy/images/python.Dockerfile);
- rabbitmq: Debian's rabbitmq-server with the management plugin (tests/deploy/images/rabbitmq.Dockerfile).
The engine: Debian's docker.io `dockerd`, started in the background when no engine answers (as root).
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOCAL = "transcription-worker-local"  # the repository prefix of every image made here
SUITE = "bookworm"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


class DockerUnavailable(RuntimeError):
    """Docker cannot run on this machine; the message says why, in one line."""


def docker(*args: str, timeout: float = 600.0, check: bool = True, input: bytes | None = None) -> str:
    """`docker ARGS`: its standard output; a failure raises with its standard error."""
    done = subprocess.run(["docker", *args], capture_output=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, ["docker", *args], done.stdout, done.stderr)
    return done.stdout.decode()


def _answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_engine(log_path: Path, timeout: float = 90.0) -> None:
    """A Docker engine that answers: the running one, else dockerd started now in its own session (it
    outlives the tests, so that the next run finds it and its image store). Raises DockerUnavailable."""
    if _answers():
        return
    if shutil.which("docker") is None:
        raise DockerUnavailable("no docker client (apt-get install docker.io)")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerUnavailable("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine answers, and starting dockerd needs root")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        engine = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers():
            return
        if engine.poll() is not None:
            break
        time.sleep(1.0)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    raise DockerUnavailable(f"dockerd did not start (see {log_path}): {tail[0][-200:]}")


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def image_size_mb(name: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", name).strip()) / 1e6


def host_mirror(
    sources: Sequence[Path] = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")),
) -> str:
    """The Debian mirror the host's apt uses (deb822 `URIs:` or a one-line `deb URL SUITE`)."""
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        if found := re.search(r"^URIs:\s*(\S+)", text, re.MULTILINE) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.MULTILINE
        ):
            return found.group(1)
    return "http://deb.debian.org/debian"


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:10]


@dataclass(frozen=True)
class BaseImages:
    """The local images a compose test builds from (names with their tags)."""

    debian: str
    python: str
    rabbitmq: str


def ensure_base_images(recipes: Path, work: Path) -> BaseImages:
    """The three local images, each made only when the engine lacks it (minutes the first time)."""
    mirror = host_mirror()
    debian = f"{LOCAL}/debian:{SUITE}-{_digest(mirror.encode(), SUITE.encode())}"
    if not image_exists(debian):
        _import_debian(debian, mirror, work)
    certs = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    names = {}
    for name, copied in (("python", certs), ("rabbitmq", [])):  # only the Python base carries the certs
        recipe = recipes / f"{name}.Dockerfile"
        tag = (
            f"{LOCAL}/{name}:{SUITE}-{_digest(debian.encode(), recipe.read_bytes(), *(c.read_bytes() for c in copied))}"
        )
        if not image_exists(tag):
            _build_from_recipe(tag, recipe, debian, copied)
        names[name] = tag
    return BaseImages(debian, names["python"], names["rabbitmq"])


def _import_debian(name: str, mirror: str, work: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise DockerUnavailable("debootstrap is not installed (apt-get install debootstrap)")
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix="rootfs-") as rootfs:
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, rootfs, mirror], check=True, capture_output=True, timeout=1200
        )
        # apt's lists and caches from the bootstrap are not part of a base image
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (Path(rootfs) / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", rootfs, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        try:
            subprocess.run(["docker", "import", "-", name], stdin=tar.stdout, check=True, capture_output=True)
        finally:
            tar.stdout.close()
            tar.wait()


def _build_from_recipe(tag: str, recipe: Path, debian: str, certs: list[Path]) -> None:
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "certs").mkdir()
        for cert in certs:
            shutil.copy(cert, Path(context) / "certs" / cert.name)
        shutil.copy(recipe, Path(context) / "Dockerfile")
        docker("build", "--build-arg", f"DEBIAN_IMAGE={debian}", "-t", tag, context, timeout=1800)


@dataclass
class Compose:
    """`docker-compose` on one project: the shipped file plus overrides, an env file, variables."""

    project: str
    directory: Path
    files: Sequence[Path]
    env_file: Path
    variables: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 900.0, check: bool = True) -> subprocess.CompletedProcess:
        command = ["docker-compose", "-p", self.project, "--env-file", str(self.env_file)]
        for path in self.files:
            command += ["-f", str(path)]
        done = subprocess.run(
            [*command, *args],
            cwd=self.directory,
            env={**os.environ, **self.variables},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def containers(self, service: str) -> list[str]:
        """The ids of the service's containers (running or not), in a stable order."""
        return sorted(self.run("ps", "-q", service).stdout.split())

    def logs(self, container: str) -> str:
        done = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    def health(self, container: str) -> str:
        return docker("inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", container).strip()

    def wait_healthy(self, services: Sequence[str], timeout: float = 300.0) -> None:
        """Every container of `services` healthy; fails naming the ones that are not, with their logs."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [c for s in services for c in self.containers(s) if self.health(c) != "healthy"]
            if not pending and all(self.containers(s) for s in services):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {c}\n{self.logs(c)[-3000:]}" for c in pending)
                raise AssertionError(f"not healthy within {timeout:.0f} s: {pending}\n{logs}")
            time.sleep(2.0)

    def resources(self) -> dict[str, list[str]]:
        """Containers, networks and volumes that carry this project's label (empty after `down -v`)."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": docker("ps", "-aq", "--filter", label).split(),
            "networks": docker("network", "ls", "-q", "--filter", label).split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label).split(),
        }
