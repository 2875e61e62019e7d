"""The job's callback: POST its result to the URL the job names (checked by `inputs.check_url` first)."""

import time

import requests
from loguru import logger

from worker.errors import CallbackFailed


def post_callback(url: str, payload: str, *, timeout_seconds: float, retries: int) -> None:
    """POST the result JSON to `url`, retrying with backoff; raises CallbackFailed at the end."""
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt * 0.25, 5.0))
        try:
            response = requests.post(
                url,
                data=payload,
                headers={"Content-Type": "application/json"},
                timeout=timeout_seconds,
                allow_redirects=False,
            )
            if response.status_code < 300:
                return
            last_error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last_error = str(exc)
        logger.warning("Callback to {} failed (attempt {} of {}): {}", url, attempt + 1, retries + 1, last_error)
    raise CallbackFailed(f"callback to {url} failed after {retries + 1} attempts: {last_error}")
