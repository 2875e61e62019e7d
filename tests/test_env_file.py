"""A developer's `.env` never reaches a test: the entry points read the file ENV_FILE names, and the
processes tests start get ENV_FILE="" (harness.NO_ENV_FILE)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from harness import NO_ENV_FILE, Service, new_topology, stop_and_check

from worker.config import Settings

# Valid names, invalid values: a process that reads this file refuses to start.
HOSTILE = "CONCURRENT_JOBS=0\nMAX_PARALLEL_WORKERS=lots\n"


@pytest.fixture
def hostile_cwd(tmp_path) -> Path:
    """A working directory whose `.env` breaks every process that reads it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text(HOSTILE)
    return cwd


def test_from_environment_reads_the_file_env_file_names_and_none_when_empty(hostile_cwd, monkeypatch):
    monkeypatch.chdir(hostile_cwd)
    monkeypatch.delenv("ENV_FILE", raising=False)
    with pytest.raises(ValueError, match="concurrent_jobs"):
        Settings.from_environment()  # the premise: the default `.env` is read, and this one is fatal

    monkeypatch.setenv("ENV_FILE", "")
    assert Settings.from_environment().concurrent_jobs == 1

    (hostile_cwd / "worker.env").write_text("CONCURRENT_JOBS=3\n")
    monkeypatch.setenv("ENV_FILE", "worker.env")
    assert Settings.from_environment().concurrent_jobs == 3


def test_a_test_worker_never_reads_the_env_file_of_its_working_directory(broker, tmp_path, hostile_cwd):
    service = Service(broker_url=broker, root=tmp_path, topology=new_topology())
    service.input_dir.mkdir()
    # PYTHONPATH: from another directory, `worker` must still be this checkout's.
    env = {**service.env(), "PYTHONPATH": str(ROOT)}

    # The premise: without ENV_FILE="", the worker reads that `.env` and refuses to start.
    reading = {key: value for key, value in env.items() if key not in NO_ENV_FILE}
    done = subprocess.run(
        [sys.executable, str(ROOT / "cmd" / "consumer" / "main.py")],
        cwd=hostile_cwd,
        env=reading,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "concurrent_jobs" in done.stderr, (done.returncode, done.stderr[-2000:])

    # The harness's environment: the same `.env` is not read, and the worker consumes.
    try:
        worker = service.start_worker(cwd=hostile_cwd, pythonpath=str(ROOT))
        worker.wait_for("Consuming")
        assert "concurrent_jobs" not in worker.log()
    finally:  # no worker outlives the test
        stop_and_check(service)
