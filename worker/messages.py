"""The wire contract: job messages in, result and progress messages out (pydantic v2, JSON).

A job is validated once, here, at the edge (`parse_job`); everything after trusts it.
"""

from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

from worker.errors import InvalidJob
from worker.formats import Format

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioSource(_Strict):
    """Exactly one of `url` (http/https) or `path` (relative to INPUT_DIR, no escapes)."""

    url: HttpUrl | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "AudioSource":
        if (self.url is None) == (self.path is None):
            raise ValueError("audio needs exactly one of 'url' or 'path'")
        return self

    @field_validator("path")
    @classmethod
    def _relative_inside(cls, value: str | None) -> str | None:
        if value is None:
            return value
        pure = PurePosixPath(value)
        if not value or pure.is_absolute() or ".." in pure.parts or "\\" in value:
            raise ValueError("path must be relative to INPUT_DIR, without '..'")
        return value


class Job(_Strict):
    """A transcription request."""

    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN)]
    audio: AudioSource
    model: str | None = None
    language: str | None = Field(default=None, description="language code, or 'auto' / null to detect")
    task: Literal["transcribe", "translate"] = "transcribe"
    formats: tuple[Format, ...] = ("json",)
    callback_url: HttpUrl | None = None

    @field_validator("language")
    @classmethod
    def _auto_is_none(cls, value: str | None) -> str | None:
        return None if value in (None, "", "auto") else value.lower()


class ErrorInfo(_Strict):
    code: str
    message: str


class Timings(_Strict):
    queue_wait_seconds: float | None = None
    download_seconds: float = 0.0
    decode_seconds: float = 0.0
    transcribe_seconds: float = 0.0
    total_seconds: float = 0.0
    real_time_factor: float | None = None


class SegmentOut(_Strict):
    start: float
    end: float
    text: str


class Result(_Strict):
    """What the worker publishes for every job it finishes or gives up on."""

    job_id: str
    status: Literal["completed", "failed"]
    attempt: int = 1
    text: str | None = None
    segments: list[SegmentOut] | None = None
    language: str | None = None
    language_probability: float | None = None
    duration_seconds: float | None = None
    model: str | None = None
    chunks: int | None = None
    outputs: dict[str, str] | None = None
    timings: Timings = Field(default_factory=Timings)
    error: ErrorInfo | None = None
    finished_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class ProgressEvent(_Strict):
    job_id: str
    stage: Literal["queued", "downloading", "decoding", "transcribing", "publishing", "completed", "failed"]
    chunks_done: int = 0
    chunks_total: int = 0
    percent: float = 0.0


def parse_job(body: bytes) -> Job:
    """The job in a message body; raises InvalidJob (permanent) for bad JSON or schema violations."""
    try:
        return Job.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidJob(f"invalid job: {problems}") from None


def job_id_of(body: bytes) -> str | None:
    """Best-effort job id from a body that failed validation (for the failed result)."""
    try:
        import json

        value = json.loads(body).get("job_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
