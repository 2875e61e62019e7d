"""The gateway's routes: OpenAI's /v1/audio endpoints, models, the page, uploads, health (jobs: jobs_api.py).

Requests reach these only through the request edge (worker/gateway/edge.py): the key and the body's
size were checked before any route reads a byte. A route validates its fields once (ApiError, in
OpenAI's shape), stores an upload under an unguessable token, publishes the job (with a deadline)
and answers from the result or the job's record.
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from worker.errors import BrokerUnavailable
from worker.gateway.openai_api import (
    OPENAI_MODEL,
    RESPONSE_FORMATS,
    ApiError,
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
from worker.gateway.parts import Parts, count_field, flag_field, list_field, tenant, text_field
from worker.gateway.speakers import check_known, stored
from worker.gateway.streaming import STREAMED_FORMATS, transcript_events
from worker.gateway.usage import USAGE_DAYS, today
from worker.messages import MAX_PROMPT_CHARS, Job, Result, SubtitleRequest, VadRequest

PAGE = Path(__file__).with_name("static") / "index.html"
AudioFile = Annotated[UploadFile, File()]
Text = Annotated[str, Form()]
OptionalText = Annotated[str | None, Form()]
Temperature = Annotated[float, Form(ge=0.0, le=1.0)]
# OpenAI's clients send a list field as repeated `name[]` parts.
Granularities = Annotated[list[Literal["segment", "word"]], Form(alias="timestamp_granularities[]")]


def _subtitles(form, response_format: str) -> SubtitleRequest | None:
    width, count = count_field(form, "max_line_width"), count_field(form, "max_line_count")
    return subtitles_of(width, count, flag_field(form, "highlight_words"), response_format)


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
    async def models(request: Request) -> JSONResponse:
        """The models this key may use (OpenAI's two names stand for the default model)."""
        names = parts.models_of(tenant(request))
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
        return await _audio(parts, request, "transcribe", file, model, language, response_format, prompt,
                            temperature, timestamp_granularities)  # fmt: skip

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
        return await _audio(parts, request, "translate", file, model, None, response_format, prompt, temperature,
                            timestamp_granularities)  # fmt: skip

    return router


@dataclass(frozen=True)
class AudioFields:
    """An audio request's form fields that FastAPI does not bind (our extensions, OpenAI's extras), checked."""

    vad: VadRequest | bool | None
    diarize: Diarize
    num_speakers: int | None
    subtitles: SubtitleRequest | None
    stream: bool
    logprobs: bool
    speaker_names: list[str]
    speaker_references: list[str]
    languages: list[str]
    keywords: list[str]


def audio_fields(form, model: str, response_format: str) -> AudioFields:
    """The fields, checked in this order (the first problem is the one answered, a 400 invalid_field)."""
    vad = vad_of(chunking_field(form))
    diarize = diarize_of(text_field(form, "diarize"), model, response_format)
    num_speakers = count_field(form, "num_speakers")
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", code="invalid_field")
    subtitles = _subtitles(form, response_format)
    stream = flag_field(form, "stream")
    if stream and response_format not in STREAMED_FORMATS:
        raise ApiError(400, f"stream=true answers {', '.join(STREAMED_FORMATS)} as events; {response_format} "
                       "is not streamed (ask without stream)", code="invalid_field")  # fmt: skip
    include = list_field(form, "include")
    if set(include) - {"logprobs"}:
        raise ApiError(400, "include[] takes logprobs only", code="invalid_field")
    if form.getlist("timestamp_granularities[]") and response_format != "verbose_json":
        raise ApiError(400, "timestamp_granularities needs response_format=verbose_json", code="invalid_field")
    return AudioFields(
        vad=vad, diarize=diarize, num_speakers=num_speakers, subtitles=subtitles, stream=stream,
        logprobs=bool(include), speaker_names=list_field(form, "known_speaker_names"),
        speaker_references=list_field(form, "known_speaker_references"), languages=list_field(form, "languages"),
        keywords=list_field(form, "keywords"),
    )  # fmt: skip


async def _audio(parts: Parts, request: Request, task: str, file: UploadFile, model: str, language: str | None,
                 response_format: str, prompt: str | None, temperature: float,
                 granularities: list[str]) -> Response:  # fmt: skip
    """One audio request: checked, its job admitted and published, answered from its result (or streamed)."""
    fields = audio_fields(await request.form(), model, response_format)  # the form FastAPI already parsed
    owner = tenant(request)
    name = parts.check_request(model, language, owner)
    quota = await parts.quota_left(owner)
    if prompt and len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(400, f"prompt is longer than {MAX_PROMPT_CHARS} characters", code="invalid_field")
    check_known(fields.speaker_names, fields.speaker_references, diarized=fields.diarize == "speakers")
    known, clips = stored(fields.speaker_names, fields.speaker_references, parts.uploads, parts.options.public_url)
    # The answer is srt or vtt: word times that lay out its cues are asked for, and never shown.
    words = "word" in granularities or (fields.subtitles is not None and fields.subtitles.needs_word_times)
    try:
        token = parts.store_upload(file)
        job = parts.new_job(token, None, name, language, task, prompt=prompt or None, temperature=temperature,
                            word_timestamps=words, vad=fields.vad, diarize=fields.diarize,
                            num_speakers=fields.num_speakers, logprobs=fields.logprobs, subtitles=fields.subtitles,
                            quota_seconds=quota, tenant=owner, known_speakers=known, languages=fields.languages,
                            keywords=fields.keywords)  # fmt: skip
        await parts.admit(owner, job.job_id, token, waited_on=True)
    except ApiError:
        for clip in clips:
            parts.uploads.delete(clip)
        raise
    waiting = parts.bridge.waiters.expect(job.job_id, owner, token, *clips)
    interactive = parts.interactive(owner, waited_on=True)
    if fields.stream:
        return await _streamed(parts, job, token, waiting, response_format, interactive)
    await parts.publish(job, token, wait=True, interactive=interactive)
    result = await _result_of(parts, job, waiting)
    body, media_type = render(result, response_format, task, temperature, granularities=granularities,
                              subtitles=job.subtitle_options)  # fmt: skip
    return Response(body, media_type=media_type, headers={"x-job-id": job.job_id})


async def _result_of(parts: Parts, job: Job, waiting: asyncio.Future) -> Result:
    """The job's result, waited for up to result_timeout_seconds; a failed job raises its error."""
    timeout = parts.options.result_timeout_seconds
    try:
        result: Result = await asyncio.wait_for(asyncio.shield(waiting), timeout)
    except TimeoutError:
        parts.bridge.waiters.forget(job.job_id)
        raise timed_out(job.job_id, timeout) from None
    except BrokerUnavailable as exc:
        raise broker_lost(exc) from None
    if result.status != "completed":
        raise failed(result)
    return result


async def _streamed(
    parts: Parts, job: Job, token: str, waiting: asyncio.Future, response_format: str, interactive: bool
) -> Response:
    """stream=true: the transcript as OpenAI's events, as its chunks come (worker/gateway/streaming.py)."""
    subscribers = parts.bridge.subscribers
    progress = subscribers.subscribe(job.job_id)  # before the publish: no chunk's progress is missed
    try:
        await parts.publish(job, token, wait=True, interactive=interactive)
    except ApiError:
        subscribers.unsubscribe(job.job_id, progress)
        raise
    events = transcript_events(job.job_id, progress, waiting, response_format, parts.options.result_timeout_seconds,
                               live=job.diarize == "off")  # fmt: skip

    async def forgetting():
        try:
            async for event in events:
                yield event
        finally:  # the end, or the client went away: the job goes on, its result is dropped here
            subscribers.unsubscribe(job.job_id, progress)
            parts.bridge.waiters.forget(job.job_id)

    return EventSourceResponse(forgetting(), headers={"x-job-id": job.job_id})


def usage_routes(parts: Parts) -> APIRouter:
    """GET /v1/usage (ours): the calling tenant's own usage by day (worker/gateway/usage.py)."""
    router = APIRouter()

    @router.get("/v1/usage")
    async def usage(request: Request, days: Annotated[int, Query(ge=1, le=USAGE_DAYS)] = 7) -> JSONResponse:
        owner = tenant(request)
        found = await asyncio.to_thread(parts.usage.days, owner, today() - days + 1)
        limits = parts.options.keys.limits(owner)
        return JSONResponse({"object": "list", "tenant": owner, "data": found,
                             "audio_seconds_per_day": limits.audio_seconds_per_day})  # fmt: skip

    return router
