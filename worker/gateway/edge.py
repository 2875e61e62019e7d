"""The request edge: an ASGI middleware every HTTP request passes before any route reads its body.

It works on the raw ASGI messages, so a hostile client costs the gateway a few bytes, not a spooled
upload, and whatever a route or a library does with a request, the answer is in OpenAI's error shape:
0. Headers over 16 KiB in all -> 431.
1. The API key (when keys are set): missing, wrong or undecodable -> 401 with the body left unread.
   Keys are compared as bytes, in constant time (a non-ASCII header cannot raise).
2. The body's size: a declared Content-Length over the route's limit -> 413 before reading; a body
   that turns out longer (chunked, or lying) is cut off at the limit -> 413, whatever the route's
   parser then makes of the cut (FastAPI reports a failed parse as 400; the edge answers 413).
   Upload routes get `max_upload_bytes`; every other body `max_body_bytes` (JSON is read whole).
   A malformed Content-Length -> 400.
3. A body that sends nothing for `idle_seconds` -> 408 (a slow client holds no request forever).
4. Anything a route raises that nothing answered -> 500 in OpenAI's shape, logged; no traceback
   reaches the client.
Answers given here close the connection: the unread rest of the body is never read.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger

from worker.gateway.tenants import Tenants

# Reached without a key: the web page (it asks for the key), worker fetches of uploads (the
# unguessable token is their credential) and the health check.
_OPEN_PATHS = ("/", "/healthz", "/favicon.ico")
_OPEN_PREFIXES = ("/uploads/",)
MAX_HEADER_BYTES = 16 << 10  # as h11's default limit: no client of this API needs more
_UPLOAD_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/jobs")


# Who a request without a key is, on a gateway that asks for none (loopback, or a proxy authenticates).
OPEN_TENANT = "open"


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error document."""
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


@dataclass(frozen=True)
class EdgeOptions:
    keys: Tenants  # the table in force; empty: no key asked
    max_upload_bytes: int
    max_body_bytes: int = 1 << 20
    idle_seconds: float = 30.0


class _Refused(Exception):
    """The body broke a rule while it streamed in; `answer` is what the client gets instead."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class RequestEdge:
    def __init__(self, app, options: EdgeOptions) -> None:
        self.app = app
        self.options = options
        self._tenants = options.keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        limit = self._limit(scope, headers)
        refusal = _header_size(scope) or self._authenticate(scope, headers) or _declared_size(headers, limit)
        if refusal is not None:
            return await _answer(send, *refusal)
        await self._serve(scope, receive, send, limit)

    def _authenticate(self, scope, headers: dict[bytes, bytes]) -> tuple[int, str, str, str] | None:
        """None when the request may go on, its tenant in `scope["state"]["tenant"]` (request.state)."""
        path = scope.get("path", "")
        state = scope.setdefault("state", {})
        keys = self._tenants.table  # one table for the whole request, whatever a reload does meanwhile
        if not keys or path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
            state["tenant"] = OPEN_TENANT if not keys else None
            return None
        scheme, _, key = headers.get(b"authorization", b"").partition(b" ")
        tenant = keys.tenant(key.strip())  # constant time over every key (KeyTable.tenant)
        if scheme.lower() == b"bearer" and tenant is not None:
            state["tenant"] = tenant
            return None
        return 401, "invalid API key (Authorization: Bearer <key>)", "invalid_request_error", "invalid_api_key"

    def _limit(self, scope, headers: dict[bytes, bytes]) -> int:
        """Uploads (multipart forms on the upload routes) may be large; every other body is read whole."""
        upload = scope.get("method") == "POST" and scope.get("path") in _UPLOAD_ROUTES
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        return self.options.max_upload_bytes if upload and multipart else self.options.max_body_bytes

    async def _serve(self, scope, receive, send, limit: int) -> None:
        state = {"seen": 0, "refused": None, "started": False, "body_done": False}

        async def guarded_receive():
            if state["body_done"]:
                # Past the body, receive() only waits for the client to leave (SSE and streaming
                # responses listen for that the whole time): no deadline there.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.options.idle_seconds)
            except TimeoutError:
                state["refused"] = _Refused(408, f"no request data for {self.options.idle_seconds:g} s", "timeout")
                raise state["refused"] from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > limit:
                state["refused"] = _Refused(413, f"the request body is larger than the limit of {limit} bytes",
                                            "too_large")  # fmt: skip
                raise state["refused"]
            return message

        async def guarded_send(message) -> None:
            if state["refused"] is not None:
                return  # the route's own answer to a body it could not finish reading: the edge's goes out
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception as exc:
            if state["refused"] is None:
                logger.opt(exception=exc).error("Unhandled error on {} {}", scope.get("method"), scope.get("path"))
                if state["started"]:
                    return  # the response had begun: nothing sane to add; the connection ends
                return await _answer(send, 500, "internal error", "server_error", "internal_error")
        if state["refused"] is not None:
            refused: _Refused = state["refused"]
            await _answer(send, refused.status, str(refused), "invalid_request_error", refused.code)


def _declared_size(headers: dict[bytes, bytes], limit: int) -> tuple[int, str, str, str] | None:
    declared = headers.get(b"content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        return 400, "malformed Content-Length", "invalid_request_error", "invalid_request"
    if int(declared) > limit:
        return (
            413,
            f"the request body is larger than the limit of {limit} bytes",
            "invalid_request_error",
            ("too_large"),
        )
    return None


def _header_size(scope) -> tuple[int, str, str, str] | None:
    size = sum(len(name) + len(value) for name, value in scope.get("headers") or [])
    if size > MAX_HEADER_BYTES:
        return 431, f"request headers are larger than {MAX_HEADER_BYTES} bytes", "invalid_request_error", "too_large"
    return None


def _headers(scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers") or []}


async def _answer(send: Callable[[dict], Awaitable[None]], status: int, message: str, kind: str, code: str) -> None:
    body = error_body(message, kind, code)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (400, 401, 408, 413, 431):
        headers.append((b"connection", b"close"))  # the unread rest of the body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
