"""The job's callback: POST its result to the URL the job names, under the egress policy.

The URL was checked when the job arrived (`EgressPolicy.resolve`, before any work); the POST's
session checks it again and connects to the address it checked, so a name that now resolves
somewhere private is refused (InputNotAllowed, not retried). Redirects are not followed.
"""

import time

import requests
from loguru import logger

from worker.egress import EgressPolicy, redact, redact_text
from worker.errors import CallbackFailed


def post_callback(url: str, payload: str, *, timeout_seconds: float, retries: int, egress: EgressPolicy) -> None:
    """POST the result JSON to `url`, retrying with backoff; raises CallbackFailed at the end,
    InputNotAllowed (at once) when the egress policy refuses the URL."""
    shown = redact(url)
    last_error = ""
    with egress.session() as session:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt * 0.25, 5.0))
            try:
                response = session.post(
                    url,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=timeout_seconds,
                    allow_redirects=False,
                )
                response.close()
                if response.status_code < 300:
                    return
                last_error = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last_error = redact_text(exc)
            logger.warning("Callback to {} failed (attempt {} of {}): {}", shown, attempt + 1, retries + 1, last_error)
    raise CallbackFailed(f"callback to {shown} failed after {retries + 1} attempts: {last_error}")
