"""Who a request is: each API key stands for a tenant, and a tenant's jobs are its own.

Two sources, merged at start-up:
- GATEWAY_API_KEYS: each key its own tenant, named by a digest of it (`key-` + 16 hex digits of its
  SHA-256): a record or a log line never holds the key;
- GATEWAY_KEYS_FILE: a TOML file of `[tenants.NAME]` tables, each with `key_sha256`, the SHA-256 hex
  digests of its keys (the file holds no secret; several keys per tenant let a key be rotated without
  the tenant losing its jobs):

      [tenants.search-team]
      key_sha256 = ["3b1f...64 hex digits", "9a0c..."]   # printf %s "$KEY" | sha256sum

      requests_per_minute = 120      # optional: over it, 429 rate_limit_exceeded (worker/gateway/limits.py)
      audio_seconds_per_day = 3600   # optional: over it, 429 insufficient_quota (worker/gateway/usage.py)
      allowed_models = ["tiny.en"]   # optional: the models (of the workers' ALLOWED_MODELS) it may use
      max_concurrent_jobs = 4        # optional: its jobs queued or running at once; one more is 429
      lane = "bulk"                  # optional: "interactive" puts its /v1/jobs ahead of bulk work too;
                                     # "bulk" sends its synchronous requests behind it (docs/architecture.md, lanes)

A presented key is hashed and compared with every digest in constant time (no early exit). A table with
any other field is refused rather than ignored.

`Tenants` holds the table in force and builds it again from the same sources on SIGHUP or when the file
changes (its size, time or inode: an editor's atomic replace counts), without a restart: requests in
flight keep the table they started with, the next ones get the new one. A file that breaks the format
then, or that leaves no key at all (the gateway would be open to anyone), is refused with an error in the
log, and the table in force stays.
"""

import functools
import hashlib
import hmac
import os
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from worker.messages import problems

TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


class _Tenant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key_sha256: Annotated[list[Digest], Field(min_length=1)]
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    audio_seconds_per_day: Annotated[int, Field(ge=1)] | None = None
    max_concurrent_jobs: Annotated[int, Field(ge=1)] | None = None
    allowed_models: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)] | None = None
    lane: Literal["interactive", "bulk"] | None = None

    def limits(self) -> "Limits":
        models = frozenset(self.allowed_models) if self.allowed_models is not None else None
        return Limits(self.requests_per_minute, self.audio_seconds_per_day, models, self.lane, self.max_concurrent_jobs)


@dataclass(frozen=True)
class Limits:
    """What a tenant may use; None: no limit."""

    requests_per_minute: int | None = None
    audio_seconds_per_day: int | None = None
    allowed_models: frozenset[str] | None = None
    lane: Literal["interactive", "bulk"] | None = None  # None: synchronous requests interactive, jobs bulk
    max_concurrent_jobs: int | None = None


NO_LIMITS = Limits()


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: dict[Annotated[str, StringConstraints(pattern=TENANT_NAME)], _Tenant]


def tenant_of(key: bytes) -> str:
    """The tenant a key of GATEWAY_API_KEYS stands for: a digest of it."""
    return "key-" + hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True)
class KeyTable:
    """SHA-256 digests of the accepted keys, each with its tenant; empty: no key asked."""

    entries: tuple[tuple[bytes, str], ...] = ()
    limited: tuple[tuple[str, Limits], ...] = ()  # tenant -> its limits, for those that have any

    @functools.cached_property
    def requests_per_minute(self) -> dict[str, int]:
        return {name: x.requests_per_minute for name, x in self.limited if x.requests_per_minute}

    @functools.cached_property
    def _limits(self) -> dict[str, Limits]:  # looked up on every request: made once
        return dict(self.limited)

    def limits(self, tenant: str | None) -> Limits:
        return self._limits.get(tenant, NO_LIMITS) if tenant is not None else NO_LIMITS

    def __bool__(self) -> bool:
        return bool(self.entries)

    @classmethod
    def build(cls, keys: frozenset[str], keys_file: Path | None) -> "KeyTable":
        """GATEWAY_API_KEYS and GATEWAY_KEYS_FILE's tenants; ValueError for a file that breaks the format or
        a key given twice."""
        entries = [(hashlib.sha256(k.encode()).digest(), tenant_of(k.encode())) for k in sorted(keys)]
        tenants = _read(keys_file) if keys_file is not None else {}
        entries += [(bytes.fromhex(d), name) for name, tenant in tenants.items() for d in tenant.key_sha256]
        digests = [digest for digest, _ in entries]
        if len(set(digests)) != len(digests):
            raise ValueError("a key is given twice (GATEWAY_API_KEYS and GATEWAY_KEYS_FILE, or two tenants)")
        limited = tuple((name, t.limits()) for name, t in tenants.items() if t.limits() != NO_LIMITS)
        return cls(tuple(entries), limited)

    def tenant(self, key: bytes) -> str | None:
        """The tenant of a presented key, or None; every digest is compared, whichever matches."""
        digest = hashlib.sha256(key).digest()
        found = None
        for known, tenant in self.entries:
            if hmac.compare_digest(digest, known):
                found = tenant
        return found


class Tenants:
    """The key table in force, built again from GATEWAY_API_KEYS and GATEWAY_KEYS_FILE on `reload`."""

    def __init__(self, keys: frozenset[str], keys_file: Path | None) -> None:
        self._keys, self._file = keys, keys_file
        self._stamp = self._file_stamp()
        self.table = KeyTable.build(keys, keys_file)  # ValueError: the start-up stops
        self._asked = threading.Event()

    def limits(self, tenant: str | None) -> Limits:
        return self.table.limits(tenant)

    def __bool__(self) -> bool:
        return bool(self.table)

    def reload(self) -> bool:
        """Build the table again; True when the new one is in force, False when it was refused."""
        self._stamp = self._file_stamp()
        try:
            table = KeyTable.build(self._keys, self._file)
        except ValueError as exc:
            logger.error("Keys not reloaded, the ones in force stay: {}", exc)
            return False
        if self.table and not table:
            logger.error(
                "Keys not reloaded, the ones in force stay: {} names no key (the gateway would be open)", self._file
            )
            return False
        self.table = table
        tenants = len({tenant for _, tenant in table.entries})
        logger.info("Keys reloaded: {} key(s) of {} tenant(s)", len(table.entries), tenants)
        return True

    def ask_reload(self) -> None:
        """From a signal handler: the watcher reloads at once (nothing else is done in the handler)."""
        self._asked.set()

    def watch(self, every_seconds: float) -> threading.Thread:
        """A daemon thread: reload when asked, and when the file changed (looked at every `every_seconds`; 0:
        only when asked)."""

        def run() -> None:
            while True:
                asked = self._asked.wait(every_seconds or None)
                self._asked.clear()
                if asked or self._file_stamp() != self._stamp:
                    self.reload()

        thread = threading.Thread(target=run, name="keys-reload", daemon=True)
        thread.start()
        return thread

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self._file is None:
            return None
        try:
            found = os.stat(self._file)
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size, found.st_ino


def _read(path: Path) -> dict[str, _Tenant]:
    try:
        document = tomllib.loads(path.read_text())
        parsed = _KeysFile.model_validate(document)
    except OSError as exc:
        raise ValueError(f"GATEWAY_KEYS_FILE {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"GATEWAY_KEYS_FILE {path}: not TOML ({exc})") from None
    except ValidationError as exc:
        raise ValueError(f"GATEWAY_KEYS_FILE {path}: {problems(exc.errors(), whole='file')}") from None
    return parsed.tenants
