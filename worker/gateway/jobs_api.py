"""Async jobs: POST /v1/jobs -> 202 and its record; GET /v1/jobs/{id}; its events over SSE.

`/v1/jobs/{id}/events` keeps its own event names (`state`, then `progress` per chunk with the chunk's
index and text, then `completed` or `failed` with the record), unlike the OpenAI stream of
`stream=true` (worker/gateway/streaming.py): a job outlives any one request, and its events say so.
"""

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.datastructures import UploadFile as FormFile

from worker.gateway.openai_api import (
    OPENAI_MODEL,
    ApiError,
    ChunkingStrategy,
    Diarize,
    chunking_field,
    diarize_of,
    vad_of,
)
from worker.gateway.parts import Parts, list_field, tenant
from worker.gateway.speakers import check_known, stored
from worker.gateway.store import dumps
from worker.messages import MAX_PROMPT_CHARS, ErrorInfo, SubtitleRequest, problems

_SSE_RECHECK_SECONDS = 5.0
LIST_FIELDS = ("languages", "keywords", "known_speaker_names", "known_speaker_references")


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
    # The worker POSTs the result there, signed (WEBHOOK_SECRET), under its URL rules.
    callback_url: AnyHttpUrl | None = None

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
            "callback_url": str(self.callback_url) if self.callback_url else None,
        }


def job_routes(parts: Parts) -> APIRouter:
    """Async jobs: POST /v1/jobs -> 202 and its record; GET /v1/jobs/{id}; SSE at /v1/jobs/{id}/events."""
    router = APIRouter()

    @router.post("/v1/jobs", status_code=202)
    async def create_job(request: Request) -> JSONResponse:
        """Multipart (file, model, ...) or JSON (url, model, ...): 202 and the job's record."""
        return await _create_job(parts, request)

    @router.get("/v1/jobs/{job_id}")
    async def get_job(request: Request, job_id: str) -> JSONResponse:
        return JSONResponse((await _record_of(parts, job_id, tenant(request))).document())

    @router.get("/v1/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str) -> EventSourceResponse:
        """Server-Sent Events: `state` first, then `progress` per chunk, then `completed` or `failed`."""
        owner = tenant(request)
        record = await _record_of(parts, job_id, owner)
        return EventSourceResponse(_events(parts, job_id, record, lambda job: _record_of(parts, job, owner)))

    return router


async def job_spec(request: Request) -> tuple[JobRequest, FormFile | None]:
    """The request's job and its upload: JSON (audio by URL, no upload) or a multipart form with the file."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            return JobRequest.model_validate_json(await request.body()), None
        except ValidationError as exc:
            raise ApiError(400, problems(exc.errors()), code="invalid_field") from None
    form = await request.form(max_files=1, max_fields=250)  # keywords: up to 100
    file = form.get("file")
    if not isinstance(file, FormFile):
        raise ApiError(400, "file: a file upload is required", code="invalid_field")
    return _form_job(form), file


def _form_job(form) -> JobRequest:
    """A multipart form's fields as a JobRequest (its audio is the upload: the URL is a placeholder)."""
    fields = {
        k: v
        for k, v in form.items()
        if k != "file"
        and isinstance(v, str)
        and not k.startswith("chunking_strategy")
        and k.removesuffix("[]") not in LIST_FIELDS
    }
    fields |= {name: list_field(form, name) for name in LIST_FIELDS if name in form or f"{name}[]" in form}
    try:
        return JobRequest(url="http://upload.invalid/", chunking_strategy=chunking_field(form), **fields)
    except ValidationError as exc:
        raise ApiError(400, problems(exc.errors()), code="invalid_field") from None


async def _create_job(parts: Parts, request: Request) -> JSONResponse:
    """POST /v1/jobs: checked, admitted, recorded, then published; 202 and the record."""
    spec, file = await job_spec(request)
    owner = tenant(request)
    name = parts.check_request(spec.model, spec.language, owner)
    quota = await parts.quota_left(owner)
    decoding = spec.decoding()
    names, references = spec.known_speaker_names, spec.known_speaker_references
    check_known(names, references, diarized=decoding["diarize"] == "speakers")
    known, _clips = stored(names, references, parts.uploads, parts.options.public_url, urls=True)  # expire by TTL
    token = parts.store_upload(file) if file is not None else None
    url = None if file is not None else str(spec.url)
    await asyncio.to_thread(parts.check_urls, url, spec.callback_url, known)
    job = parts.new_job(token, url, name, spec.language, spec.task, known_speakers=known, quota_seconds=quota,
                        tenant=owner, **decoding)  # fmt: skip
    await parts.admit(owner, job.job_id, token, waited_on=False)
    # Recorded before the publish (its result may come back before this request ends), and marked
    # failed if the publish fails: no record stays "queued" for a job the broker never had.
    store = parts.store
    record = await asyncio.to_thread(store.add, job.job_id, task=spec.task, model=name, upload_token=token, owner=owner)
    try:
        await parts.publish(job, token, wait=False, interactive=parts.interactive(owner, waited_on=False))
    except ApiError as exc:
        await asyncio.to_thread(store.fail, job.job_id, ErrorInfo(code="BrokerUnavailable", message=str(exc)))
        raise
    return JSONResponse(record.document(), status_code=202, headers={"location": f"/v1/jobs/{job.job_id}"})


async def _record_of(parts: Parts, job_id: str, owner: str):
    """The job's record for its owner; 404 for any other tenant, as for a job that is not there."""
    record = await asyncio.to_thread(parts.store.get, job_id, owner=owner)
    if record is None:
        raise ApiError(404, f"no job {job_id!r}", code="not_found")
    return record


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
