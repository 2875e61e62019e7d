"""HTTP at the job's edges: fetching audio from a URL and POSTing the result to a callback URL.

Every URL a job names is checked before any connection is made (`check_url`): http or https
only, and, when ALLOWED_URL_HOSTS is set, one of those hosts. Redirects are followed by hand so
that each hop gets the same check: an allowed host cannot bounce the worker somewhere else.
"""

import time
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from loguru import logger

from worker.errors import (
    CallbackFailed,
    DownloadFailed,
    DownloadRejected,
    InputNotAllowed,
    InputNotFound,
    InputTooLarge,
)

_CHUNK = 1 << 16
MAX_REDIRECTS = 5


def check_url(url: str, allowed_hosts: Collection[str] | None) -> None:
    """Raise InputNotAllowed unless `url` is http(s) on an allowed host (any host when None)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise InputNotAllowed(f"URL scheme {parts.scheme or '(none)'!r} is not allowed (http or https only): {url}")
    host = (parts.hostname or "").lower()
    if not host:
        raise InputNotAllowed(f"URL has no host: {url}")
    if allowed_hosts is not None and host not in allowed_hosts:
        raise InputNotAllowed(f"host {host!r} is not in ALLOWED_URL_HOSTS: {url}")


def download_audio(url: str, dest: Path, *, max_bytes: int, timeout_seconds: float,
                   allowed_hosts: Collection[str] | None = None) -> int:
    """Stream `url` into `dest`; returns the size.

    Permanent: InputNotAllowed (scheme/host, also on a redirect), InputNotFound (404/410),
    DownloadRejected (other 4xx, too many redirects), InputTooLarge (over `max_bytes`).
    Transient: DownloadFailed (network errors, 5xx, 408/429, no data for `timeout_seconds`).
    """
    try:
        with _follow(url, allowed_hosts, timeout_seconds) as response:
            announced = int(response.headers.get("Content-Length") or 0)
            if announced > max_bytes:
                raise InputTooLarge(f"audio at {url} is {announced} bytes, over the limit of {max_bytes}")
            return _stream_to(response, dest, max_bytes, url)
    except requests.RequestException as exc:
        raise DownloadFailed(f"downloading {url} failed: {exc}") from exc


def _follow(url: str, allowed_hosts: Collection[str] | None, timeout_seconds: float) -> requests.Response:
    """The final response for `url` after at most MAX_REDIRECTS checked redirects."""
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allowed_hosts)
        response = requests.get(url, stream=True, allow_redirects=False,
                                timeout=(min(10.0, timeout_seconds), timeout_seconds))
        if response.is_redirect:
            response.close()
            url = urljoin(url, response.headers["Location"])
            continue
        _raise_for_status(response, url)
        return response
    raise DownloadRejected(f"audio URL redirected more than {MAX_REDIRECTS} times (a loop?): {url}")


def _raise_for_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status < 400:
        return
    response.close()
    if status in (404, 410):
        raise InputNotFound(f"audio URL answered HTTP {status}: {url}")
    if status < 500 and status not in (408, 429):
        raise DownloadRejected(f"audio URL answered HTTP {status}: {url}")
    raise DownloadFailed(f"audio URL answered HTTP {status}: {url}")


def _stream_to(response: requests.Response, dest: Path, max_bytes: int, url: str) -> int:
    size = 0
    with open(dest, "wb") as out:
        for block in response.iter_content(_CHUNK):
            size += len(block)
            # Enforced while streaming: a server may send more than it announced, or announce nothing.
            if size > max_bytes:
                raise InputTooLarge(f"audio at {url} is over the limit of {max_bytes} bytes")
            out.write(block)
    return size


def post_callback(url: str, payload: str, *, timeout_seconds: float, retries: int) -> None:
    """POST the result JSON to `url`, retrying with backoff; raises CallbackFailed at the end."""
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt * 0.25, 5.0))
        try:
            response = requests.post(url, data=payload, headers={"Content-Type": "application/json"},
                                     timeout=timeout_seconds, allow_redirects=False)
            if response.status_code < 300:
                return
            last_error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last_error = str(exc)
        logger.warning("Callback to {} failed (attempt {} of {}): {}", url, attempt + 1, retries + 1, last_error)
    raise CallbackFailed(f"callback to {url} failed after {retries + 1} attempts: {last_error}")
