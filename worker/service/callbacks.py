"""The job's callback: POST its result to the URL the job names, under the egress policy, signed.

The URL was checked when the job arrived (`EgressPolicy.resolve`, before any work); the POST's
session checks it again and connects to the address it checked, so a name that now resolves
somewhere private is refused (InputNotAllowed, not retried). Redirects are not followed.

Signed as Standard Webhooks (and OpenAI's webhooks) are, when the worker has a WEBHOOK_SECRET:
`webhook-id` (one per callback, the same on every retry, so a receiver can drop a repeat),
`webhook-timestamp` (seconds, per attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body" keyed by the secret's bytes>`. The `openai` client verifies them
(`client.webhooks.verify_signature(body, headers, secret=...)`), as any Standard Webhooks library does.
"""

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field

import requests
from loguru import logger

from worker.egress import EgressPolicy, redact, redact_text
from worker.errors import CallbackFailed

SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class WebhookSigner:
    """Signs callback bodies with a Standard Webhooks secret (`whsec_` + base64 of its bytes)."""

    key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> "WebhookSigner":
        """ValueError unless `secret` is `whsec_` + base64 of at least 24 bytes (the scheme's own size)."""
        try:
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a webhook secret is {SECRET_PREFIX} followed by base64") from None
        if len(key) < 24:
            raise ValueError(f"a webhook secret holds at least 24 bytes (this one {len(key)})")
        return cls(key)

    def headers(self, message_id: str, body: str, now: float) -> dict[str, str]:
        timestamp = str(int(now))
        signed = f"{message_id}.{timestamp}.{body}".encode()
        signature = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        return {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}


def post_callback(
    url: str,
    payload: str,
    *,
    timeout_seconds: float,
    retries: int,
    egress: EgressPolicy,
    signer: WebhookSigner | None = None,
) -> None:
    """POST the result JSON to `url` (signed by `signer`), retrying with backoff; raises CallbackFailed
    at the end, InputNotAllowed (at once) when the egress policy refuses the URL."""
    shown = redact(url)
    last_error = ""
    message_id = f"msg_{uuid.uuid4().hex}"
    with egress.session() as session:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt * 0.25, 5.0))
            headers = {"Content-Type": "application/json"}
            if signer is not None:
                headers |= signer.headers(message_id, payload, time.time())
            try:
                response = session.post(
                    url,
                    data=payload,
                    headers=headers,
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
