"""The fan-out contract: chunk tasks to any worker, chunk results back to the job's coordinator."""

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from worker.errors import InvalidChunkTask
from worker.messages import (
    JOB_ID_PATTERN,
    LANGUAGES,
    MAX_CHUNK_PIECES,
    MAX_PROMPT_CHARS,
    ErrorInfo,
    SegmentOut,
    Strict,
    problems,
)


class ChunkTask(Strict):
    """What a worker needs to transcribe one chunk of a fanned-out job.

    Carried in the AMQP headers of a chunk task (names: `x-` + field, `_` as `-`); the body is the
    chunk's audio as 16 kHz mono FLAC, and `reply_to` names the job's gather queue.
    """

    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN)]
    index: Annotated[int, Field(ge=0)]
    start: Annotated[int, Field(ge=0)]  # samples from the start of the job's audio
    end: int
    # A chunk of speech regions: the sample ranges its audio is made of (the body is them one after
    # another); absent for a chunk of one piece, [start, end).
    pieces: Annotated[list[tuple[int, int]], Field(max_length=MAX_CHUNK_PIECES)] | None = None
    chunks_total: Annotated[int, Field(ge=1)]
    model: Annotated[str, Field(min_length=1, max_length=100)]
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    word_timestamps: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "ChunkTask":
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.pieces is not None:
            bounds = [b for piece in self.pieces for b in piece]
            if not bounds or bounds[0] != self.start or bounds[-1] != self.end:
                raise ValueError("pieces must run from start to end")
            if any(a >= b for a, b in zip(bounds[::2], bounds[1::2], strict=True)) or bounds != sorted(bounds):
                raise ValueError("pieces must be ascending, non-empty, disjoint sample ranges")
        if self.index >= self.chunks_total:
            raise ValueError("index must be below chunks_total")
        if self.language is not None and self.language not in LANGUAGES:
            raise ValueError(f"{self.language!r} is not a language code whisper knows")
        return self

    def headers(self) -> dict:
        return {
            "x-" + name.replace("_", "-"): _header_value(value)
            for name, value in self.model_dump().items()
            if value is not None
        }


def _header_value(value: Any) -> Any:
    # pika's field tables take no floats (a float travels as its decimal string, parsed back exactly)
    # and no tuples (pieces travel as lists of lists).
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [list(item) if isinstance(item, tuple) else item for item in value]
    return value


def parse_chunk_task(headers: dict | None) -> ChunkTask:
    """The chunk task in a message's headers; InvalidChunkTask when they break the contract."""
    # Other headers (the broker's x-delivery-count, x-death of a replayed dead letter) are not ours.
    fields = {
        name: value.decode(errors="replace") if isinstance(value, bytes) else value
        for name in ChunkTask.model_fields
        if (value := (headers or {}).get("x-" + name.replace("_", "-"))) is not None
    }
    try:
        return ChunkTask.model_validate(fields)
    except ValidationError as exc:
        raise InvalidChunkTask(f"invalid chunk task: {problems(exc.errors(), whole='headers')}") from None


class GatherMessage(Strict):
    """A message on a job's gather queue: one chunk's result, or the coordinator's scatter record."""

    kind: Literal["chunk", "scattered"]
    job_id: str
    index: int | None = None  # chunk
    status: Literal["completed", "failed"] = "completed"  # chunk
    segments: list[SegmentOut] = Field(default_factory=list)  # chunk: absolute times
    error: ErrorInfo | None = None  # chunk, when failed
    worker: str | None = None  # chunk: who transcribed it
    seconds: float = 0.0  # chunk: transcription wall time
    chunks: int | None = None  # scattered: how many chunk tasks were published
    at: float | None = None  # scattered: when (epoch seconds)
