"""Requests per minute per tenant (GATEWAY_KEYS_FILE's `requests_per_minute`), in OpenAI's shape.

An ASGI layer behind the request edge (which named the request's tenant): on the API's routes (/v1/),
each request is counted in the job database (worker/gateway/usage.py: every tenant's, for its usage), so
every replica counts the same requests, in fixed windows of a minute. Over the limit: 429 with
`Retry-After` (seconds to the next minute) and OpenAI's error (`type` "requests", `code` "rate_limit_exceeded"); every answered request
carries OpenAI's `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and
`x-ratelimit-reset-requests`. A database that cannot count lets the request through (with an error in
the log): the limit is a fairness rule, and the routes that need the database answer 503 themselves.
"""

import time
from collections.abc import Callable, Mapping

import anyio
from loguru import logger
from sqlalchemy.exc import SQLAlchemyError

from worker.gateway.edge import error_body

Counter = Callable[[str, int], int]  # (tenant, epoch minute) -> requests in it, this one included


class RateLimit:
    def __init__(self, app, limits: Callable[[], Mapping[str, int]], count: Counter) -> None:
        self.app, self.limits, self.count = app, limits, count  # limits(): the tenants' in force now

    async def __call__(self, scope, receive, send) -> None:
        tenant = scope.get("state", {}).get("tenant") if scope["type"] == "http" else None
        if tenant is None or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        limit = self.limits().get(tenant)
        now = time.time()
        minute = int(now // 60)
        try:
            used = await anyio.to_thread.run_sync(self.count, tenant, minute)
        except SQLAlchemyError as exc:
            logger.error("Requests of tenant {} could not be counted, let through: {}", tenant, exc)
            return await self.app(scope, receive, send)
        if limit is None:
            return await self.app(scope, receive, send)
        reset = max(1, round((minute + 1) * 60 - now))
        headers = [
            (b"x-ratelimit-limit-requests", str(limit).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, limit - used)).encode()),
            (b"x-ratelimit-reset-requests", f"{reset}s".encode()),
        ]
        if used > limit:
            return await _too_many(send, limit, reset, headers)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _too_many(send, limit: int, reset: int, headers: list[tuple[bytes, bytes]]) -> None:
    message = f"rate limit reached: {limit} requests per minute; try again in {reset} s"
    body = error_body(message, "requests", "rate_limit_exceeded")
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    retry = [(b"retry-after", str(reset).encode())]
    await send({"type": "http.response.start", "status": 429, "headers": [*start, *retry, *headers]})
    await send({"type": "http.response.body", "body": body})
