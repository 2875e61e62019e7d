"""Uploads on the gateway's disk, each served to workers at an unguessable, expiring URL.

Workers on other machines fetch the audio over HTTP from the gateway (no shared disk): the job names
`<public url>/uploads/<token>`, a 256-bit random token, and the worker's URL rules must allow the
gateway's host. An upload is deleted when its job's result arrives, or `ttl_seconds` after it was
stored, whichever comes first.
"""

import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import BinaryIO

from loguru import logger


class UploadStore:
    def __init__(self, root: Path, *, ttl_seconds: float) -> None:
        self.root = root
        self.ttl_seconds = ttl_seconds
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def save(self, source: BinaryIO) -> tuple[str, int]:
        """Copy an uploaded file (already spooled by the form parser) under a new token; (token, bytes)."""
        token = secrets.token_urlsafe(32)
        path = self.root / token
        with open(path, "wb") as out:
            shutil.copyfileobj(source, out, length=1 << 20)
        return token, path.stat().st_size

    def path(self, token: str) -> Path | None:
        """The upload's file while it is there and not expired (tokens are never taken as paths)."""
        if not token.replace("-", "").replace("_", "").isalnum() or len(token) != 43:
            return None
        path = self.root / token
        try:
            fresh = time.time() - path.stat().st_mtime < self.ttl_seconds
        except FileNotFoundError:
            return None
        return path if fresh else None

    def delete(self, token: str) -> None:
        (self.root / token).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Delete expired uploads (their job never ended here, e.g. the gateway restarted)."""
        removed = 0
        for path in self.root.iterdir():
            if time.time() - path.stat().st_mtime >= self.ttl_seconds:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("Removed {} expired upload(s)", removed)
        return removed
