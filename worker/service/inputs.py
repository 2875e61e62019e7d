"""A job's audio (and its known speakers' clips) from INPUT_DIR or a URL fetched under the egress
policy (worker/egress/).

Every request goes through `EgressPolicy.session()`, which checks the URL, resolves its host,
refuses non-public addresses (unless the operator allowed them) and connects to the address it
checked. Redirects are followed here, by hand, one hop at a time, so that each hop is a new
checked request: an allowed host cannot bounce the worker somewhere else. URLs in messages are
redacted (`egress.redact`): no credentials, no query strings.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import requests

from worker.egress import MAX_REDIRECTS, EgressPolicy, redact, redact_text
from worker.errors import (
    AudioDecodeError,
    DownloadFailed,
    DownloadRejected,
    InputNotAllowed,
    InputNotFound,
    InputTooLarge,
    InvalidReference,
)
from worker.media.audio import decode_audio
from worker.messages import REFERENCE_SECONDS, AudioSource, Job
from worker.pipeline import KnownVoice, known_voice

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Sources:
    """Where a job's audio may come from: a path inside `input_dir`, or a URL the egress policy allows."""

    input_dir: Path
    egress: EgressPolicy
    max_bytes: int
    timeout_seconds: float

    def fetch(self, source: AudioSource, dest: Path) -> Path:
        """The file of `source`: the local file itself, or the URL downloaded into `dest`."""
        if source.path is not None:
            return self.local(source.path)
        download_audio(
            str(source.url), dest, max_bytes=self.max_bytes, timeout_seconds=self.timeout_seconds, egress=self.egress
        )
        return dest

    def local(self, relative: str) -> Path:
        if os.path.isabs(relative):  # even one inside INPUT_DIR: the contract is a relative path
            raise InputNotAllowed(f"audio path must be relative to INPUT_DIR: {relative}")
        root = self.input_dir.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):  # a symlink inside INPUT_DIR pointing out of it
            raise InputNotAllowed(f"audio path escapes INPUT_DIR: {relative}")
        return path  # missing, or not a regular file: decode_audio raises InputNotFound

    def known_voices(self, job: Job, scratch: Path) -> tuple[KnownVoice, ...]:
        """The job's known speakers with their clips fetched, decoded and checked (InvalidReference)."""
        voices = []
        for k, speaker in enumerate(job.known_speakers):
            path = self.fetch(speaker.audio, scratch / f"known-speaker-{k}")
            try:
                samples = decode_audio(path, max_seconds=REFERENCE_SECONDS[1])
            except AudioDecodeError as exc:
                raise InvalidReference(f"known speaker {speaker.name!r}: {exc}") from None
            voices.append(known_voice(speaker.name, samples))
        return tuple(voices)


def download_audio(url: str, dest: Path, *, max_bytes: int, timeout_seconds: float, egress: EgressPolicy) -> int:
    """Stream `url` into `dest`; returns the size.

    Permanent: InputNotAllowed (refused by the egress policy, also on a redirect), InputNotFound
    (404/410), DownloadRejected (other 4xx, too many redirects), InputTooLarge (over `max_bytes`).
    Transient: DownloadFailed (network errors, 5xx, 408/429, no data for `timeout_seconds`).
    """
    try:
        with egress.session() as session:
            response, final = _follow(session, egress, url, timeout_seconds)
            with response:
                announced = int(response.headers.get("Content-Length") or 0)
                if announced > max_bytes:
                    raise InputTooLarge(f"audio at {redact(final)} is {announced} bytes, over the limit of {max_bytes}")
                return _stream_to(response, dest, max_bytes, final)
    except requests.RequestException as exc:
        raise DownloadFailed(f"downloading {redact(url)} failed: {redact_text(exc)}") from None


def _follow(
    session: requests.Session, egress: EgressPolicy, url: str, timeout_seconds: float
) -> tuple[requests.Response, str]:
    """The final response for `url`, and its URL, after at most MAX_REDIRECTS checked redirects."""
    for _ in range(MAX_REDIRECTS + 1):
        egress.check_url(url)  # each hop's form and host; the session checks its addresses
        response = session.get(
            url, stream=True, allow_redirects=False, timeout=(min(10.0, timeout_seconds), timeout_seconds)
        )
        if response.is_redirect:
            response.close()
            url = urljoin(url, response.headers["Location"])
            continue
        _raise_for_status(response, url)
        return response, url
    raise DownloadRejected(f"audio URL redirected more than {MAX_REDIRECTS} times (a loop?): {redact(url)}")


def _raise_for_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status < 400:
        return
    response.close()
    if status in (404, 410):
        raise InputNotFound(f"audio URL answered HTTP {status}: {redact(url)}")
    if status < 500 and status not in (408, 429):
        raise DownloadRejected(f"audio URL answered HTTP {status}: {redact(url)}")
    raise DownloadFailed(f"audio URL answered HTTP {status}: {redact(url)}")


def _stream_to(response: requests.Response, dest: Path, max_bytes: int, url: str) -> int:
    size = 0
    with open(dest, "wb") as out:
        for block in response.iter_content(_CHUNK):
            size += len(block)
            # Enforced while streaming: a server may send more than it announced, or announce nothing.
            if size > max_bytes:
                raise InputTooLarge(f"audio at {redact(url)} is over the limit of {max_bytes} bytes")
            out.write(block)
    return size
