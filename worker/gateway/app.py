"""The gateway's HTTP API (FastAPI): OpenAI's /v1/audio endpoints over the jobs queue, and async jobs.

A request's upload is spooled to disk by the form parser (never whole in memory; BodyLimit stops it
past the size limit), stored under an unguessable token, and becomes a job whose audio URL is that
upload on this gateway. /v1/audio/* waits for the job's result on this process's reply queue and
answers in OpenAI's shape; /v1/jobs answers 202 at once, records the job in the database, and its
result (on the replicas' durable results queue) and progress (SSE at /v1/jobs/{id}/events) follow.
The upload is deleted when the result arrives.
"""

import asyncio
import collections
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from loguru import logger
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.datastructures import UploadFile as FormFile

from worker.errors import BrokerUnavailable
from worker.gateway.broker import BrokerClient
from worker.gateway.openai_api import OPENAI_MODEL, RESPONSE_FORMATS, ApiError, error_body, failed, render
from worker.gateway.store import JobStore, dumps
from worker.gateway.uploads import BodyLimit, UploadStore
from worker.messages import LANGUAGES, MAX_PROMPT_CHARS, Job, ProgressEvent, Result, problems
from worker.service.session import DEFAULT_OPTIONS, SessionOptions

PAGE = Path(__file__).with_name("static") / "index.html"
AudioFile = Annotated[UploadFile, File()]
Text = Annotated[str, Form()]
OptionalText = Annotated[str | None, Form()]
Temperature = Annotated[float, Form(ge=0.0, le=1.0)]
# OpenAI's clients send a list field as repeated `name[]` parts.
Granularities = Annotated[list[Literal["segment", "word"]], Form(alias="timestamp_granularities[]")]


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


class Subscribers:
    """SSE streams of this process, per job id; fed from the broker's thread."""

    def __init__(self) -> None:
        self._queues: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = collections.defaultdict(list)

    def subscribe(self, job_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[job_id].append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        self._queues[job_id] = [(loop, q) for loop, q in self._queues[job_id] if q is not queue]
        if not self._queues[job_id]:
            del self._queues[job_id]

    def send(self, job_id: str, event: str, data: str) -> None:
        for loop, queue in list(self._queues.get(job_id, ())):
            loop.call_soon_threadsafe(queue.put_nowait, (event, data))


class JobRequest(BaseModel):
    """POST /v1/jobs as JSON: audio by URL."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    model: str = OPENAI_MODEL
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    word_timestamps: bool = False

    def decoding(self) -> dict:
        return {"prompt": self.prompt or None, "temperature": self.temperature, "word_timestamps": self.word_timestamps}


def create_app(
    options: GatewayOptions,
    *,
    broker_url: str,
    topology,
    uploads: UploadStore,
    store: JobStore,
    async_results_queue: str,
    broker_options: SessionOptions = DEFAULT_OPTIONS,
) -> FastAPI:
    waiters = Waiters(uploads)
    subscribers = Subscribers()

    def on_async_result(result: Result) -> None:  # the broker's thread
        record = store.finish(result)
        if record is None:
            return  # another gateway's job (a shared queue, a foreign database): nothing to record
        if record.upload_token:
            uploads.delete(record.upload_token)
        subscribers.send(result.job_id, record.state, dumps(record))

    def on_progress(event: ProgressEvent) -> None:  # the broker's thread
        if event.stage in ("completed", "failed"):
            return  # the result itself ends the stream
        if store.progress(event):
            subscribers.send(event.job_id, "progress", event.model_dump_json())

    broker = BrokerClient(
        broker_url,
        topology,
        async_results_queue=async_results_queue,
        on_result=waiters.resolve,
        on_async_result=on_async_result,
        on_progress=on_progress,
        options=broker_options,
    )
    if not options.api_keys:
        logger.warning("No GATEWAY_API_KEYS set: the gateway accepts requests from anyone who can reach it")
    app = FastAPI(title="transcription gateway", on_startup=[broker.start], on_shutdown=[broker.stop])

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> Response:
        return Response(error_body(str(exc), exc.type, exc.code), status_code=exc.status, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def bad_field(_request: Request, exc: RequestValidationError) -> Response:
        message = problems(exc.errors(), skip=1)  # FastAPI's paths start with where the field was: "body"
        return Response(
            error_body(message, "invalid_request_error", "invalid_field"), 400, media_type="application/json"
        )

    def authorize(request: Request) -> None:
        if not options.api_keys:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(secrets.compare_digest(key, k) for k in options.api_keys):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: upload, progress over SSE, transcript, downloads (plain HTML, no build step)."""
        return FileResponse(PAGE, media_type="text/html")

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

    def check_request(model: str, language: str | None) -> str:
        """The model name the job gets; ApiError for an unknown model or language."""
        name = options.default_model if model == OPENAI_MODEL else model
        if name not in options.models:
            raise ApiError(400, f"unknown model {model!r}; GET /v1/models lists them", code="model_not_found")
        if language and language.lower() not in LANGUAGES:
            raise ApiError(400, f"unknown language {language!r}", code="invalid_language")
        return name

    def store_upload(file: FormFile) -> str:
        token, size = uploads.save(file.file)
        if size == 0:
            uploads.delete(token)
            raise ApiError(400, "the uploaded file is empty", code="empty_file")
        return token

    async def publish(job: Job, token: str | None, *, wait: bool) -> None:
        try:
            await asyncio.wrap_future(
                broker.publish(job.job_id, job.model_dump_json(exclude_none=True).encode(), wait=wait)
            )
        except BrokerUnavailable as exc:
            waiters.forget(job.job_id)
            if token:
                uploads.delete(token)
            raise ApiError(503, str(exc), type="server_error", code="broker_unavailable") from None

    def new_job(token: str | None, url: str | None, model: str, language: str | None, task: str, **decoding) -> Job:
        audio = {"url": f"{options.public_url}/uploads/{token}"} if token else {"url": url}
        return Job(
            job_id=f"gw-{uuid.uuid4().hex}", audio=audio, model=model, language=language or None, task=task, **decoding
        )

    async def audio(request: Request, task: str, file: UploadFile, model: str, language: str | None,
                    response_format: str, prompt: str | None, temperature: float,
                    granularities: list[str]) -> Response:  # fmt: skip
        authorize(request)
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", code="invalid_field")
        name = check_request(model, language)
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"prompt is longer than {MAX_PROMPT_CHARS} characters", code="invalid_field")
        token = store_upload(file)
        words = "word" in granularities
        job = new_job(token, None, name, language, task, prompt=prompt or None, temperature=temperature,
                      word_timestamps=words)  # fmt: skip
        waiting = waiters.expect(job.job_id, token)
        await publish(job, token, wait=True)
        try:
            result: Result = await asyncio.wait_for(asyncio.shield(waiting), options.result_timeout_seconds)
        except TimeoutError:
            # The job goes on; its upload stays until the result arrives or the upload expires.
            raise ApiError(504, f"no result within {options.result_timeout_seconds:g} s; job {job.job_id} is "
                           "still queued or running", type="server_error", code="timeout") from None  # fmt: skip
        if result.status != "completed":
            raise failed(result)
        body, media_type = render(result, response_format, task, temperature, granularities=granularities)
        return Response(body, media_type=media_type, headers={"x-job-id": job.job_id})

    # --- async jobs ---

    @app.post("/v1/jobs", status_code=202)
    async def create_job(request: Request) -> JSONResponse:
        """Multipart (file, model, language, task) or JSON (url, model, language, task): 202 and the job."""
        authorize(request)
        token, url = None, None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=10)
            file = form.get("file")
            if not isinstance(file, FormFile):
                raise ApiError(400, "file: a file upload is required", code="invalid_field")
            fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
            try:
                spec = JobRequest(url="http://upload.invalid/", **fields)
            except ValidationError as exc:
                raise ApiError(400, problems(exc.errors()), code="invalid_field") from None
            name = check_request(spec.model, spec.language)
            token = store_upload(file)
        else:
            try:
                spec = JobRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                raise ApiError(400, problems(exc.errors()), code="invalid_field") from None
            name, url = check_request(spec.model, spec.language), str(spec.url)
        job = new_job(token, url, name, spec.language, spec.task, **spec.decoding())
        record = await asyncio.to_thread(store.add, job.job_id, task=spec.task, model=name, upload_token=token)
        await publish(job, token, wait=False)
        return JSONResponse(record.document(), status_code=202, headers={"location": f"/v1/jobs/{job.job_id}"})

    async def record_of(job_id: str):
        record = await asyncio.to_thread(store.get, job_id)
        if record is None:
            raise ApiError(404, f"no job {job_id!r}", code="not_found")
        return record

    @app.get("/v1/jobs/{job_id}")
    async def get_job(request: Request, job_id: str) -> JSONResponse:
        authorize(request)
        return JSONResponse((await record_of(job_id)).document())

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str) -> EventSourceResponse:
        """Server-Sent Events: `state` first, then `progress` per chunk, then `completed` or `failed`."""
        authorize(request)
        record = await record_of(job_id)

        async def stream():
            queue = subscribers.subscribe(job_id)
            try:
                current = record
                yield {"event": "state", "data": dumps(current)}
                while current.state not in ("completed", "failed"):
                    try:
                        event, data = await asyncio.wait_for(queue.get(), timeout=5.0)
                    except TimeoutError:
                        # Another replica may have taken the result: the database has it.
                        current = await record_of(job_id)
                        if current.state in ("completed", "failed"):
                            yield {"event": current.state, "data": dumps(current)}
                        continue
                    yield {"event": event, "data": data}
                    if event in ("completed", "failed"):
                        break
            finally:
                subscribers.unsubscribe(job_id, queue)

        return EventSourceResponse(stream())

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: AudioFile,
        model: Text = OPENAI_MODEL,
        language: OptionalText = None,
        prompt: OptionalText = None,
        response_format: Text = "json",
        temperature: Temperature = 0.0,
        timestamp_granularities: Granularities = ["segment"],  # noqa: B006 (FastAPI copies defaults)
    ) -> Response:
        return await audio(request, "transcribe", file, model, language, response_format, prompt, temperature,
                           timestamp_granularities)  # fmt: skip

    @app.post("/v1/audio/translations")
    async def translations(
        request: Request,
        file: AudioFile,
        model: Text = OPENAI_MODEL,
        prompt: OptionalText = None,
        response_format: Text = "json",
        temperature: Temperature = 0.0,
        timestamp_granularities: Granularities = ["segment"],  # noqa: B006 (FastAPI copies defaults)
    ) -> Response:
        return await audio(request, "translate", file, model, None, response_format, prompt, temperature,
                           timestamp_granularities)  # fmt: skip

    return BodyLimit(app, max_bytes=options.max_upload_bytes)
