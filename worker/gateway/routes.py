"""The gateway's routes: OpenAI's /v1/audio endpoints, async jobs, models, the page, uploads, health.

Requests reach these only through the request edge (worker/gateway/edge.py): the key and the body's
size were checked before any route reads a byte. A route validates its fields once (ApiError, in
OpenAI's shape), stores an upload under an unguessable token, publishes the job (with a deadline)
and answers from the result or the job's record.
"""

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.datastructures import UploadFile as FormFile

from worker.errors import BrokerUnavailable
from worker.gateway.bridge import Bridge
from worker.gateway.openai_api import (
    OPENAI_DIARIZE_MODEL,
    OPENAI_MODEL,
    RESPONSE_FORMATS,
    ApiError,
    ChunkingStrategy,
    Diarize,
    broker_lost,
    chunking_field,
    diarize_of,
    failed,
    render,
    subtitles_of,
    timed_out,
    vad_of,
)
from worker.gateway.speakers import check_known, stored
from worker.gateway.store import JobStore, dumps
from worker.gateway.streaming import STREAMED_FORMATS, transcript_events
from worker.gateway.uploads import UploadStore
from worker.messages import LANGUAGES, MAX_PROMPT_CHARS, ErrorInfo, Job, Result, SubtitleRequest, problems

PAGE = Path(__file__).with_name("static") / "index.html"
AudioFile = Annotated[UploadFile, File()]
Text = Annotated[str, Form()]
OptionalText = Annotated[str | None, Form()]
Temperature = Annotated[float, Form(ge=0.0, le=1.0)]
# OpenAI's clients send a list field as repeated `name[]` parts.
Granularities = Annotated[list[Literal["segment", "word"]], Form(alias="timestamp_granularities[]")]
_SSE_RECHECK_SECONDS = 5.0
LIST_FIELDS = ("languages", "keywords", "known_speaker_names", "known_speaker_references")


@dataclass(frozen=True)
class GatewayOptions:
    public_url: str  # how workers reach this gateway (the uploads' URLs)
    default_model: str
    models: tuple[str, ...]  # the names jobs may give (the workers' ALLOWED_MODELS)
    api_keys: frozenset[str]  # empty: open
    max_upload_bytes: int
    result_timeout_seconds: float
    publish_timeout_seconds: float = 10.0
    body_idle_seconds: float = 30.0


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
    logprobs: bool = False
    chunking_strategy: ChunkingStrategy | None = None
    diarize: Diarize = "off"
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    # The job's `subtitles` (checked there): they lay out a job's srt and vtt; a record answers with the
    # result, not with cues, so today they only travel with the job.
    max_line_width: int | None = None
    max_line_count: int | None = None
    highlight_words: bool = False
    # OpenAI's fields (the job checks them); a known speaker's reference: a data URL, or an http(s) URL
    # the worker fetches under its URL rules.
    languages: list[str] = []
    keywords: list[str] = []
    known_speaker_names: list[str] = []
    known_speaker_references: list[str] = []

    def decoding(self) -> dict:
        return {
            "languages": self.languages,
            "keywords": self.keywords,
            "prompt": self.prompt or None,
            "temperature": self.temperature,
            "word_timestamps": self.word_timestamps,
            "logprobs": self.logprobs,
            "vad": vad_of(self.chunking_strategy),
            "diarize": diarize_of(self.diarize if self.diarize != "off" else None, self.model, ""),
            "num_speakers": self.num_speakers,
            "min_speakers": self.min_speakers,
            "max_speakers": self.max_speakers,
            "subtitles": self.model_dump(include=set(SubtitleRequest.model_fields), exclude_defaults=True) or None,
        }


@dataclass(frozen=True)
class Parts:
    """What every route works with."""

    options: GatewayOptions
    broker: object  # worker.gateway.broker.BrokerClient: publish(job_id, body, wait=) -> Future, connected
    bridge: Bridge
    store: JobStore
    uploads: UploadStore

    def check_request(self, model: str, language: str | None) -> str:
        """The model name the job gets; ApiError for a model that is not allowed or an unknown language."""
        name = self.options.default_model if model in (OPENAI_MODEL, OPENAI_DIARIZE_MODEL) else model
        if name not in self.options.models:
            allowed = ", ".join((OPENAI_MODEL, OPENAI_DIARIZE_MODEL, *self.options.models))
            raise ApiError(400, f"model {model!r} is not available here; allowed: {allowed}", code="model_not_found")
        if language and language.lower() not in LANGUAGES:
            raise ApiError(400, f"unknown language {language!r}", code="invalid_language")
        return name

    def store_upload(self, file: FormFile) -> str:
        token, size = self.uploads.save(file.file)
        if size == 0:
            self.uploads.delete(token)
            raise ApiError(400, "the uploaded file is empty", code="empty_file")
        return token

    def new_job(self, token: str | None, url: str | None, model: str, language: str | None, task: str,
                **decoding) -> Job:  # fmt: skip
        audio = {"url": f"{self.options.public_url}/uploads/{token}"} if token else {"url": url}
        try:
            return Job(
                job_id=f"gw-{uuid.uuid4().hex}",
                audio=audio,
                model=model,
                language=language or None,
                task=task,
                **decoding,
            )
        except ValidationError as exc:  # fields checked together (speaker counts with diarize)
            if token:
                self.uploads.delete(token)
            raise ApiError(400, problems(exc.errors(), whole="request"), code="invalid_field") from None

    async def publish(self, job: Job, token: str | None, *, wait: bool) -> None:
        """Publish and wait for the broker's confirm, at most publish_timeout_seconds; else 503."""
        body = job.model_dump_json(exclude_none=True).encode()
        try:
            future = asyncio.wrap_future(self.broker.publish(job.job_id, body, wait=wait))
            await asyncio.wait_for(future, self.options.publish_timeout_seconds)
        except (BrokerUnavailable, TimeoutError) as exc:
            self.bridge.waiters.forget(job.job_id)
            if token:
                self.uploads.delete(token)
            reason = str(exc) or f"the broker did not confirm job {job.job_id} in time"
            raise ApiError(503, reason, type="server_error", code="broker_unavailable") from None


def _text(form, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value else None


def _flag(form, name: str) -> bool:
    value = _text(form, name)
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError(400, f"{name} must be true or false", code="invalid_field")


def _list(form, name: str) -> list[str]:
    """A list field: repeated `name[]` parts, as OpenAI's clients send one (or `name`, as curl users may)."""
    return [v for v in form.getlist(f"{name}[]") + form.getlist(name) if isinstance(v, str)]


def _count(form, name: str) -> int | None:
    value = _text(form, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number", code="invalid_field") from None


def _subtitles(form, response_format: str) -> SubtitleRequest | None:
    width, count = _count(form, "max_line_width"), _count(form, "max_line_count")
    return subtitles_of(width, count, _flag(form, "highlight_words"), response_format)


def misc_routes(parts: Parts) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: upload, progress over SSE, transcript, downloads (plain HTML, no build step)."""
        return FileResponse(PAGE, media_type="text/html")

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        ok = parts.broker.connected.is_set()
        return Response("ok\n" if ok else "broker not connected\n", 200 if ok else 503, media_type="text/plain")

    @router.get("/v1/models")
    async def models() -> JSONResponse:
        names = [OPENAI_MODEL, OPENAI_DIARIZE_MODEL, *parts.options.models]
        return JSONResponse(
            {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "local"} for n in names]}
        )

    @router.get("/uploads/{token}")
    async def upload(token: str) -> Response:
        path = parts.uploads.path(token)
        if path is None:
            raise ApiError(404, "no such upload (finished, expired or never there)", code="not_found")
        return FileResponse(path, media_type="application/octet-stream")

    return router


def audio_routes(parts: Parts) -> APIRouter:
    """POST /v1/audio/transcriptions and /translations: the answer waits for the job's result."""
    router = APIRouter()
    options = parts.options

    async def audio(request: Request, task: str, file: UploadFile, model: str, language: str | None,
                    response_format: str, prompt: str | None, temperature: float,
                    granularities: list[str]) -> Response:  # fmt: skip
        form = await request.form()  # the form FastAPI already parsed: our extension fields and chunking_strategy
        vad = vad_of(chunking_field(form))
        diarize = diarize_of(_text(form, "diarize"), model, response_format)
        num_speakers = _count(form, "num_speakers")
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", code="invalid_field")
        subtitles = _subtitles(form, response_format)
        stream = _flag(form, "stream")
        if stream and response_format not in STREAMED_FORMATS:
            raise ApiError(400, f"stream=true answers {', '.join(STREAMED_FORMATS)} as events; {response_format} "
                           "is not streamed (ask without stream)", code="invalid_field")  # fmt: skip
        include = _list(form, "include")
        if set(include) - {"logprobs"}:
            raise ApiError(400, "include[] takes logprobs only", code="invalid_field")
        if form.getlist("timestamp_granularities[]") and response_format != "verbose_json":
            raise ApiError(400, "timestamp_granularities needs response_format=verbose_json", code="invalid_field")
        name = parts.check_request(model, language)
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"prompt is longer than {MAX_PROMPT_CHARS} characters", code="invalid_field")
        names, references = _list(form, "known_speaker_names"), _list(form, "known_speaker_references")
        check_known(names, references, diarized=diarize == "speakers")
        known, clips = stored(names, references, parts.uploads, options.public_url)
        openai_fields = {
            "known_speakers": known,
            "languages": _list(form, "languages"),
            "keywords": _list(form, "keywords"),
        }
        # The answer is srt or vtt: word times that lay out its cues are asked for, and never shown.
        words = "word" in granularities or (subtitles is not None and subtitles.needs_word_times)
        try:
            token = parts.store_upload(file)
            job = parts.new_job(token, None, name, language, task, prompt=prompt or None, temperature=temperature,
                                word_timestamps=words, vad=vad, diarize=diarize, num_speakers=num_speakers,
                                logprobs=bool(include), subtitles=subtitles, **openai_fields)  # fmt: skip
        except ApiError:
            for clip in clips:
                parts.uploads.delete(clip)
            raise
        waiting = parts.bridge.waiters.expect(job.job_id, token, *clips)
        if stream:
            return await streamed(job, token, waiting, response_format)
        await parts.publish(job, token, wait=True)
        try:
            result: Result = await asyncio.wait_for(asyncio.shield(waiting), options.result_timeout_seconds)
        except TimeoutError:
            parts.bridge.waiters.forget(job.job_id)
            raise timed_out(job.job_id, options.result_timeout_seconds) from None
        except BrokerUnavailable as exc:
            raise broker_lost(exc) from None
        if result.status != "completed":
            raise failed(result)
        body, media_type = render(result, response_format, task, temperature, granularities=granularities,
                                  subtitles=job.subtitle_options)  # fmt: skip
        return Response(body, media_type=media_type, headers={"x-job-id": job.job_id})

    async def streamed(job: Job, token: str, waiting: asyncio.Future, response_format: str) -> Response:
        subscribers = parts.bridge.subscribers
        progress = subscribers.subscribe(job.job_id)  # before the publish: no chunk's progress is missed
        try:
            await parts.publish(job, token, wait=True)
        except ApiError:
            subscribers.unsubscribe(job.job_id, progress)
            raise
        events = transcript_events(job.job_id, progress, waiting, response_format, options.result_timeout_seconds,
                                   live=job.diarize == "off")  # fmt: skip

        async def forgetting():
            try:
                async for event in events:
                    yield event
            finally:  # the end, or the client went away: the job goes on, its result is dropped here
                subscribers.unsubscribe(job.job_id, progress)
                parts.bridge.waiters.forget(job.job_id)

        return EventSourceResponse(forgetting(), headers={"x-job-id": job.job_id})

    @router.post("/v1/audio/transcriptions")
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

    @router.post("/v1/audio/translations")
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

    return router


def job_routes(parts: Parts) -> APIRouter:
    """Async jobs: POST /v1/jobs -> 202 and its record; GET /v1/jobs/{id}; SSE at /v1/jobs/{id}/events."""
    router = APIRouter()
    store = parts.store

    async def job_spec(request: Request) -> tuple[JobRequest, FormFile | None]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            try:
                return JobRequest.model_validate_json(await request.body()), None
            except ValidationError as exc:
                raise ApiError(400, problems(exc.errors()), code="invalid_field") from None
        form = await request.form(max_files=1, max_fields=250)  # keywords: up to 100
        file = form.get("file")
        if not isinstance(file, FormFile):
            raise ApiError(400, "file: a file upload is required", code="invalid_field")
        fields = {
            k: v
            for k, v in form.items()
            if k != "file"
            and isinstance(v, str)
            and not k.startswith("chunking_strategy")
            and k.removesuffix("[]") not in LIST_FIELDS
        }
        fields |= {name: _list(form, name) for name in LIST_FIELDS if name in form or f"{name}[]" in form}
        try:
            return JobRequest(url="http://upload.invalid/", chunking_strategy=chunking_field(form), **fields), file
        except ValidationError as exc:
            raise ApiError(400, problems(exc.errors()), code="invalid_field") from None

    @router.post("/v1/jobs", status_code=202)
    async def create_job(request: Request) -> JSONResponse:
        """Multipart (file, model, ...) or JSON (url, model, ...): 202 and the job's record."""
        spec, file = await job_spec(request)
        name = parts.check_request(spec.model, spec.language)
        token = parts.store_upload(file) if file is not None else None
        url = None if file is not None else str(spec.url)
        names, references = spec.known_speaker_names, spec.known_speaker_references
        check_known(names, references, diarized=spec.decoding()["diarize"] == "speakers")
        known, _clips = stored(names, references, parts.uploads, parts.options.public_url, urls=True)  # expire by TTL
        job = parts.new_job(token, url, name, spec.language, spec.task, known_speakers=known, **spec.decoding())
        # Recorded before the publish (its result may come back before this request ends), and marked
        # failed if the publish fails: no record stays "queued" for a job the broker never had.
        record = await asyncio.to_thread(store.add, job.job_id, task=spec.task, model=name, upload_token=token)
        try:
            await parts.publish(job, token, wait=False)
        except ApiError as exc:
            await asyncio.to_thread(store.fail, job.job_id, ErrorInfo(code="BrokerUnavailable", message=str(exc)))
            raise
        return JSONResponse(record.document(), status_code=202, headers={"location": f"/v1/jobs/{job.job_id}"})

    async def record_of(job_id: str):
        record = await asyncio.to_thread(store.get, job_id)
        if record is None:
            raise ApiError(404, f"no job {job_id!r}", code="not_found")
        return record

    @router.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> JSONResponse:
        return JSONResponse((await record_of(job_id)).document())

    @router.get("/v1/jobs/{job_id}/events")
    async def job_events(job_id: str) -> EventSourceResponse:
        """Server-Sent Events: `state` first, then `progress` per chunk, then `completed` or `failed`."""
        record = await record_of(job_id)
        return EventSourceResponse(_events(parts, job_id, record, record_of))

    return router


async def _events(parts: Parts, job_id: str, record, record_of):
    subscribers = parts.bridge.subscribers
    queue = subscribers.subscribe(job_id)
    try:
        current = record
        yield {"event": "state", "data": dumps(current)}
        if current.state in ("completed", "failed"):
            yield {"event": current.state, "data": dumps(current)}
        while current.state not in ("completed", "failed"):
            try:
                event, data = await asyncio.wait_for(queue.get(), timeout=_SSE_RECHECK_SECONDS)
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
