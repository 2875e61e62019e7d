"""Scratch directories: claimed under a lock, swept when their owner is gone, never while claiming."""

import multiprocessing
import os
import time
from pathlib import Path

from worker.service.scratch import WorkDir, sweep


def test_a_claimed_directory_is_kept_while_its_owner_lives_and_swept_after(tmp_path):
    work = WorkDir.claim(tmp_path)
    assert work.path.parent == tmp_path and work.path.name.startswith("worker-")
    assert sweep(tmp_path) == [] and work.path.is_dir()
    work._lock.release()  # as the kernel does for a process that dies without cleaning up
    assert sweep(tmp_path) == [work.path] and not work.path.exists()


def test_a_directory_being_claimed_is_not_swept_until_it_is_stale(tmp_path):
    # Another worker has created its directory and not locked it yet: the race CI hit, where a
    # sweeping worker removed it and the claiming one failed with FileNotFoundError.
    staged = tmp_path / ".claiming-worker-host-1-abc"
    staged.mkdir()
    assert sweep(tmp_path) == [] and staged.is_dir()
    old = time.time() - 3600  # its claimer was killed before locking it
    os.utime(staged, (old, old))
    assert sweep(tmp_path) == [staged] and not staged.exists()


def _claim_and_hold(root: str, ready, release) -> None:
    with WorkDir.claim(Path(root)):
        ready.wait()
        release.wait()


def test_workers_starting_together_each_keep_their_own_directory(tmp_path):
    processes = 8
    ready, release = multiprocessing.Barrier(processes + 1), multiprocessing.Event()
    workers = [
        multiprocessing.Process(target=_claim_and_hold, args=(str(tmp_path), ready, release)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    ready.wait(timeout=60)  # every one of them claimed its directory and still holds it
    assert len(list(tmp_path.glob("worker-*"))) == processes
    release.set()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * processes
    assert list(tmp_path.iterdir()) == []
