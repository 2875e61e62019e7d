"""A job's audio from a URL, and the rules every URL a job names must follow.

Every URL a job names (audio or callback) is checked before any connection is made (`check_url`): http or https
only, and, when ALLOWED_URL_HOSTS is set, one of those hosts. Redirects are followed by hand so
that each hop gets the same check: an allowed host cannot bounce the worker somewhere else.
"""

from collections.abc import Collection
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from worker.errors import (
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


def download_audio(
    url: str, dest: Path, *, max_bytes: int, timeout_seconds: float, allowed_hosts: Collection[str] | None = None
) -> int:
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
        response = requests.get(
            url, stream=True, allow_redirects=False, timeout=(min(10.0, timeout_seconds), timeout_seconds)
        )
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
