"""HTTP at the job's edges: fetching audio from a URL and POSTing the result to a callback URL."""

import time
from pathlib import Path

import requests
from loguru import logger

from worker.errors import CallbackFailed, DownloadFailed, InvalidJob

_CHUNK = 1 << 16


def download_audio(url: str, dest: Path, *, max_bytes: int, timeout_seconds: float) -> int:
    """Stream `url` (http/https only) into `dest`; returns the size.

    Raises InvalidJob for a scheme we do not fetch or a body over `max_bytes` (permanent),
    DownloadFailed for network errors and HTTP errors (transient: a retry may work).
    """
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidJob(f"audio URL must be http or https: {url}")
    try:
        with requests.get(url, stream=True, timeout=(min(10.0, timeout_seconds), timeout_seconds)) as response:
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                raise InvalidJob(f"audio URL answered HTTP {response.status_code}: {url}")
            response.raise_for_status()
            announced = int(response.headers.get("Content-Length") or 0)
            if announced > max_bytes:
                raise InvalidJob(f"audio at {url} is {announced} bytes, over the limit of {max_bytes}")
            return _stream_to(response, dest, max_bytes, url)
    except requests.RequestException as exc:
        raise DownloadFailed(f"downloading {url} failed: {exc}") from exc


def _stream_to(response: requests.Response, dest: Path, max_bytes: int, url: str) -> int:
    size = 0
    with open(dest, "wb") as out:
        for block in response.iter_content(_CHUNK):
            size += len(block)
            # Enforced while streaming: a server may send more than it announced, or announce nothing.
            if size > max_bytes:
                raise InvalidJob(f"audio at {url} is over the limit of {max_bytes} bytes")
            out.write(block)
    return size


def post_callback(url: str, payload: str, *, timeout_seconds: float, retries: int) -> None:
    """POST the result JSON to `url`, retrying with backoff; raises CallbackFailed (transient)."""
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt * 0.25, 5.0))
        try:
            response = requests.post(url, data=payload, headers={"Content-Type": "application/json"},
                                     timeout=timeout_seconds)
            if response.status_code < 400:
                return
            last_error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last_error = str(exc)
        logger.warning("Callback to {} failed (attempt {} of {}): {}", url, attempt + 1, retries + 1, last_error)
    raise CallbackFailed(f"callback to {url} failed after {retries + 1} attempts: {last_error}")
