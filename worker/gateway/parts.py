"""What every gateway route works with: the options, the broker, the bridge, the stores (`Parts`), and
readers of form fields that answer a bad value with OpenAI's 400."""

import asyncio
import time
import uuid
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.datastructures import UploadFile as FormFile
from starlette.requests import Request

from worker.egress import EgressPolicy, NameNotResolved
from worker.errors import BrokerUnavailable, InputNotAllowed
from worker.gateway.bridge import Bridge
from worker.gateway.openai_api import (
    OPENAI_DIARIZE_MODEL,
    OPENAI_MODEL,
    ApiError,
    concurrency_exceeded,
    quota_exceeded,
)
from worker.gateway.store import JobStore
from worker.gateway.tenants import Tenants
from worker.gateway.uploads import UploadStore
from worker.gateway.usage import UsageBook, today
from worker.messages import LANGUAGES, Job, problems


@dataclass(frozen=True)
class GatewayOptions:
    public_url: str  # how workers reach this gateway (the uploads' URLs)
    default_model: str
    models: tuple[str, ...]  # the names jobs may give (the workers' ALLOWED_MODELS)
    keys: Tenants  # the key table in force (reloaded); empty: open
    max_upload_bytes: int
    result_timeout_seconds: float
    publish_timeout_seconds: float = 10.0
    body_idle_seconds: float = 30.0
    # The workers' egress policy (wiring.egress_policy): URLs a job names are checked here first, so that
    # a client hears at once what a worker would refuse. None: no check here.
    egress: EgressPolicy | None = None


@dataclass(frozen=True)
class Parts:
    """What every route works with."""

    options: GatewayOptions
    broker: object  # worker.gateway.broker.BrokerClient: publish(job_id, body, wait=) -> Future, connected
    bridge: Bridge
    store: JobStore
    uploads: UploadStore
    usage: UsageBook

    async def quota_left(self, tenant: str | None) -> float | None:
        """Seconds of audio `tenant` has left today (None: no quota); 429 insufficient_quota when none."""
        quota = self.options.keys.limits(tenant).audio_seconds_per_day
        if quota is None or tenant is None:
            return None
        left = quota - await asyncio.to_thread(self.usage.audio_seconds, tenant, today())
        if left <= 0:
            raise quota_exceeded(f"today's audio quota of {quota} s is used up; it starts again at 00:00 UTC")
        return left

    def models_of(self, tenant: str | None) -> tuple[str, ...]:
        """The model names a tenant may give: the workers' ALLOWED_MODELS narrowed by its `allowed_models`,
        after OpenAI's two names when they stand for one of those (the default model)."""
        narrowed = self.options.keys.limits(tenant).allowed_models
        models = tuple(m for m in self.options.models if narrowed is None or m in narrowed)
        aliases = (OPENAI_MODEL, OPENAI_DIARIZE_MODEL) if self.options.default_model in models else ()
        return (*aliases, *models)

    def check_request(self, model: str, language: str | None, tenant: str | None) -> str:
        """The model name the job gets; ApiError for a model that is not allowed (to this tenant) or an
        unknown language."""
        allowed = self.models_of(tenant)
        if model not in allowed:
            raise ApiError(400, f"model {model!r} is not available here; allowed: {', '.join(allowed) or 'none'}",
                           code="model_not_found")  # fmt: skip
        if language and language.lower() not in LANGUAGES:
            raise ApiError(400, f"unknown language {language!r}", code="invalid_language")
        return self.options.default_model if model in (OPENAI_MODEL, OPENAI_DIARIZE_MODEL) else model

    def check_urls(self, audio: str | None, callback: object | None, speakers: list[dict]) -> None:
        """400 InputNotAllowed (the workers' code, and message) for a job's URL (its audio, callback, speakers'
        clips) that the workers' policy refuses by its form, host or resolved addresses. The worker stays the
        authority: it checks again at every connection (its resolver may answer otherwise), and a name that
        does not resolve here is left to it. Blocking (DNS): called in a thread."""
        clips = [speaker["audio"]["url"] for speaker in speakers]
        for url in (audio, str(callback) if callback else None, *clips):
            if url is None or self.options.egress is None:
                continue
            try:
                self.options.egress.resolve(url)
            except InputNotAllowed as exc:
                raise ApiError(400, str(exc), code="InputNotAllowed") from None
            except NameNotResolved:
                pass

    def interactive(self, tenant: str | None, *, waited_on: bool) -> bool:
        """Whether a job goes on the interactive lane: a tenant's `lane` when it has one, else whether
        someone waits on the answer (a synchronous request) rather than polls for it (/v1/jobs)."""
        lane = self.options.keys.limits(tenant).lane
        return waited_on if lane is None else lane == "interactive"

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

    async def admit(self, tenant: str | None, job_id: str, token: str | None, *, waited_on: bool) -> None:
        """Record the job as in progress for a tenant with `max_concurrent_jobs`; 429 (its upload deleted)
        when that many are already queued or running. A synchronous job's slot expires once its request
        could no longer be waiting."""
        limit = self.options.keys.limits(tenant).max_concurrent_jobs
        if limit is None or tenant is None:
            return
        expires = time.time() + self.options.result_timeout_seconds + 60 if waited_on else None
        if not await asyncio.to_thread(self.usage.open_job, tenant, job_id, limit, expires):
            if token:
                self.uploads.delete(token)
            raise concurrency_exceeded(limit)

    async def publish(self, job: Job, token: str | None, *, wait: bool, interactive: bool) -> None:
        """Publish and wait for the broker's confirm, at most publish_timeout_seconds; else 503.
        `interactive`: on the lane that goes ahead of bulk work (see `interactive`)."""
        body = job.model_dump_json(exclude_none=True).encode()
        try:
            future = asyncio.wrap_future(self.broker.publish(job.job_id, body, wait=wait, interactive=interactive))
            await asyncio.wait_for(future, self.options.publish_timeout_seconds)
        except (BrokerUnavailable, TimeoutError) as exc:
            self.bridge.waiters.forget(job.job_id)
            await asyncio.to_thread(self.usage.close_job, job.job_id)
            if token:
                self.uploads.delete(token)
            reason = str(exc) or f"the broker did not confirm job {job.job_id} in time"
            raise ApiError(503, reason, type="server_error", code="broker_unavailable") from None


def tenant(request: Request) -> str:
    """The tenant the request edge found for the request's key (worker.gateway.edge)."""
    return request.state.tenant


def text_field(form, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value else None


def flag_field(form, name: str) -> bool:
    value = text_field(form, name)
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError(400, f"{name} must be true or false", code="invalid_field")


def list_field(form, name: str) -> list[str]:
    """A list field: repeated `name[]` parts, as OpenAI's clients send one (or `name`, as curl users may)."""
    return [v for v in form.getlist(f"{name}[]") + form.getlist(name) if isinstance(v, str)]


def count_field(form, name: str) -> int | None:
    value = text_field(form, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number", code="invalid_field") from None
