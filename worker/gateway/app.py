"""The gateway's HTTP API (FastAPI): OpenAI's /v1/audio endpoints over the jobs queue.

A request's upload is spooled to disk by the form parser (never whole in memory; BodyLimit stops it
past the size limit), stored under an unguessable token, and becomes a job whose audio URL is that
upload on this gateway. The handler waits for the job's result on the gateway's reply queue and
answers in OpenAI's shape; the upload is deleted when the result arrives.
"""

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from loguru import logger

from worker.errors import BrokerUnavailable
from worker.gateway.broker import BrokerClient
from worker.gateway.openai_api import OPENAI_MODEL, RESPONSE_FORMATS, ApiError, error_body, failed, render
from worker.gateway.uploads import BodyLimit, UploadStore
from worker.messages import LANGUAGES, Job, Result

AudioFile = Annotated[UploadFile, File()]
Text = Annotated[str, Form()]
OptionalText = Annotated[str | None, Form()]
Temperature = Annotated[float, Form(ge=0.0, le=1.0)]


@dataclass(frozen=True)
class GatewayOptions:
    public_url: str  # how workers reach this gateway (the uploads' URLs)
    default_model: str
    models: tuple[str, ...]
    api_keys: frozenset[str]  # empty: open
    max_upload_bytes: int
    result_timeout_seconds: float


class Waiters:
    """Job id -> the future its request awaits; results may arrive on the broker's thread at any time."""

    def __init__(self, uploads: UploadStore) -> None:
        self._uploads = uploads
        self._futures: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future, str]] = {}

    def expect(self, job_id: str, token: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._futures[job_id] = (loop, future, token)
        return future

    def forget(self, job_id: str) -> None:
        self._futures.pop(job_id, None)

    def resolve(self, result: Result) -> None:
        """Called on the broker's thread for every result on the reply queue."""
        entry = self._futures.pop(result.job_id, None)
        if entry is None:
            return
        loop, future, token = entry
        self._uploads.delete(token)
        loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))


def create_app(options: GatewayOptions, *, broker_url: str, topology, uploads: UploadStore) -> FastAPI:
    waiters = Waiters(uploads)
    broker = BrokerClient(broker_url, topology, waiters.resolve)
    if not options.api_keys:
        logger.warning("No GATEWAY_API_KEYS set: the gateway accepts requests from anyone who can reach it")
    app = FastAPI(title="transcription gateway", on_startup=[broker.start], on_shutdown=[broker.stop])

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return Response(error_body(str(exc), exc.type, exc.code), status_code=exc.status, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def bad_field(_request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return Response(
            error_body(problems, "invalid_request_error", "invalid_field"), 400, media_type="application/json"
        )

    def authorize(request: Request) -> None:
        if not options.api_keys:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(secrets.compare_digest(key, k) for k in options.api_keys):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        names = [OPENAI_MODEL, *options.models]
        return JSONResponse(
            {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "local"} for n in names]}
        )

    @app.get("/uploads/{token}")
    async def upload(token: str) -> Response:
        path = uploads.path(token)
        if path is None:
            raise ApiError(404, "no such upload (finished, expired or never there)", code="not_found")
        return FileResponse(path, media_type="application/octet-stream")

    async def audio(request: Request, task: str, file: UploadFile, model: str, language: str | None,
                    response_format: str) -> Response:  # fmt: skip
        authorize(request)
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", code="invalid_field")
        name = options.default_model if model == OPENAI_MODEL else model
        if name not in options.models:
            raise ApiError(400, f"unknown model {model!r}; GET /v1/models lists them", code="model_not_found")
        if language and language.lower() not in LANGUAGES:
            raise ApiError(400, f"unknown language {language!r}", code="invalid_language")
        token, size = uploads.save(file.file)
        if size == 0:
            uploads.delete(token)
            raise ApiError(400, "the uploaded file is empty", code="empty_file")
        job_id = f"gw-{uuid.uuid4().hex}"
        job = Job(job_id=job_id, audio={"url": f"{options.public_url}/uploads/{token}"}, model=name,
                  language=language or None, task=task)  # fmt: skip
        waiting = waiters.expect(job_id, token)
        try:
            await asyncio.wrap_future(broker.publish(job_id, job.model_dump_json(exclude_none=True).encode()))
        except BrokerUnavailable as exc:
            waiters.forget(job_id)
            uploads.delete(token)
            raise ApiError(503, str(exc), type="server_error", code="broker_unavailable") from None
        try:
            result: Result = await asyncio.wait_for(asyncio.shield(waiting), options.result_timeout_seconds)
        except TimeoutError:
            # The job goes on; its upload stays until the result arrives or the upload expires.
            raise ApiError(504, f"no result within {options.result_timeout_seconds:g} s; job {job_id} is still "
                           "queued or running", type="server_error", code="timeout") from None  # fmt: skip
        if result.status != "completed":
            raise failed(result)
        body, media_type = render(result, response_format, task)
        return Response(body, media_type=media_type, headers={"x-job-id": job_id})

    def unsupported(prompt: str | None, temperature: float) -> None:
        # Not yet carried by the job contract: refused rather than silently ignored.
        if prompt:
            raise ApiError(400, "prompt is not supported yet by this server", code="unsupported_field")
        if temperature:
            raise ApiError(400, "only temperature 0 (greedy decoding) is supported", code="unsupported_field")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: AudioFile,
        model: Text = OPENAI_MODEL,
        language: OptionalText = None,
        prompt: OptionalText = None,
        response_format: Text = "json",
        temperature: Temperature = 0.0,
    ) -> Response:
        unsupported(prompt, temperature)
        return await audio(request, "transcribe", file, model, language, response_format)

    @app.post("/v1/audio/translations")
    async def translations(
        request: Request,
        file: AudioFile,
        model: Text = OPENAI_MODEL,
        prompt: OptionalText = None,
        response_format: Text = "json",
        temperature: Temperature = 0.0,
    ) -> Response:
        unsupported(prompt, temperature)
        return await audio(request, "translate", file, model, None, response_format)

    return BodyLimit(app, max_bytes=options.max_upload_bytes)
