"""Scratch directories that never outlive their worker, even one killed with SIGKILL.

Each worker process claims its own directory under WORK_DIR and holds an exclusive lock
on a file inside it for as long as it lives. A process that dies, however it dies, drops
its lock with it (the kernel releases flock locks), so the next worker to start finds the
directory unlocked and removes it: no chunk or download survives its job for long.
"""

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout
from loguru import logger

_LOCK_NAME = ".owner.lock"
_PREFIX = "worker-"
_STAGING = ".claiming-"
# A staged directory older than this was left by a worker killed while claiming it.
_STAGING_GRACE_SECONDS = 60.0


class WorkDir:
    """This process's scratch directory; use as a context manager, or call close()."""

    def __init__(self, path: Path, lock: FileLock) -> None:
        self.path = path
        self._lock = lock

    @classmethod
    def claim(cls, root: Path) -> "WorkDir":
        """Sweep directories of dead workers under `root`, then create and lock our own."""
        root.mkdir(parents=True, exist_ok=True)
        sweep(root)
        # Locked under a name sweep() passes over, then renamed: another worker sweeping at the same
        # moment would otherwise find the new directory not yet locked and remove it (seen in CI).
        name = f"{_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        staged = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{name}", dir=root))
        lock = FileLock(staged / _LOCK_NAME)
        lock.acquire()
        path = root / staged.name.removeprefix(_STAGING)
        staged.rename(path)  # the lock is on the open file, which moves with its directory
        return cls(path, lock)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()

    def __enter__(self) -> "WorkDir":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def sweep(root: Path) -> list[Path]:
    """Remove the directories under `root` whose owner is gone; returns them."""
    removed = []
    stale_before = time.time() - _STAGING_GRACE_SECONDS
    staged = [p for p in root.glob(f"{_STAGING}*") if _mtime(p) < stale_before]
    for candidate in sorted([*root.glob(f"{_PREFIX}*"), *staged]):
        if candidate.is_dir() and _owner_is_gone(candidate):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    if removed:
        logger.info(
            "Removed {} scratch director{} left by stopped workers: {}",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(p.name for p in removed),
        )
    return removed


def _owner_is_gone(directory: Path) -> bool:
    lock = FileLock(directory / _LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by another worker's sweep meanwhile
        return float("inf")
