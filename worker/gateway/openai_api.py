"""OpenAI's audio API shapes: request fields checked once, results and errors answered in its forms."""

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.formats import PLAIN, SubtitleOptions, to_srt, to_vtt
from worker.messages import Result, SubtitleRequest, VadRequest, problems

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
OPENAI_MODEL = "whisper-1"  # what OpenAI clients send: our default model
# OpenAI's diarizing model: our default model, with diarize "speakers".
OPENAI_DIARIZE_MODEL = "gpt-4o-transcribe-diarize"
Diarize = Literal["off", "channels", "speakers"]


def diarize_of(requested: str | None, model: str, response_format: str) -> Diarize:
    """A request's diarization: the `diarize` field (ours) when given; else "speakers" for OpenAI's
    diarizing model or its diarized_json, as OpenAI's clients ask for speakers; else off."""
    if requested:
        if requested not in ("off", "channels", "speakers"):
            raise ApiError(400, "diarize must be one of off, channels, speakers", code="invalid_field")
        return requested  # type: ignore[return-value]
    return "speakers" if model == OPENAI_DIARIZE_MODEL or response_format == "diarized_json" else "off"


# A failed job's error code -> (HTTP status, OpenAI error type).
_STATUS = {
    "InvalidJob": (400, "invalid_request_error"),
    "SingleChannel": (400, "invalid_request_error"),
    "InvalidReference": (400, "invalid_request_error"),
    "MalformedJob": (400, "invalid_request_error"),
    "AudioDecodeError": (400, "invalid_request_error"),
    "EmptyAudio": (400, "invalid_request_error"),
    "AudioTooLong": (400, "invalid_request_error"),
    "UnknownModel": (400, "invalid_request_error"),
    "ModelNotAllowed": (400, "invalid_request_error"),
    "InputNotAllowed": (400, "invalid_request_error"),
    "InputNotFound": (400, "invalid_request_error"),
    "InputTooLarge": (413, "invalid_request_error"),
    "DownloadRejected": (400, "invalid_request_error"),
    "ModelUnavailable": (503, "server_error"),
}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code = status, type, code


class ServerVad(BaseModel):
    """OpenAI's `chunking_strategy` object: its server-side VAD's tuning."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"]
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    prefix_padding_ms: Annotated[int, Field(ge=0, le=5_000)] | None = None
    silence_duration_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None

    def vad(self) -> VadRequest:
        # OpenAI pads the start of speech; our padding is on both sides of a region, and its silence
        # duration is what ends one: the same roles.
        return VadRequest(
            threshold=self.threshold, speech_pad_ms=self.prefix_padding_ms, min_silence_ms=self.silence_duration_ms
        )


ChunkingStrategy = Literal["auto"] | ServerVad


def vad_of(strategy: "ChunkingStrategy | None") -> VadRequest | bool | None:
    """The job's `vad` for a chunking_strategy: "auto" = VAD with the workers' settings, server_vad = VAD
    tuned by its fields, none = the workers' CHUNKING."""
    if strategy is None:
        return None
    return True if strategy == "auto" else strategy.vad()


def chunking_field(form: Mapping[str, Any]) -> "ChunkingStrategy | None":
    """chunking_strategy from form fields, as OpenAI's clients send it (`chunking_strategy=auto`, or the
    object's members as `chunking_strategy[type]`, ...) or as curl users may (the object as JSON text)."""
    raw: Any = form.get("chunking_strategy")
    members = {k[len("chunking_strategy[") : -1]: v for k, v in form.items() if k.startswith("chunking_strategy[")}
    if raw is None and not members:
        return None
    if raw is not None and members:
        raise ApiError(400, "chunking_strategy: give it once", code="invalid_field")
    if isinstance(raw, str) and raw.strip().startswith("{"):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ApiError(400, "chunking_strategy: not valid JSON", code="invalid_field") from None
    if raw == "auto":
        return "auto"
    try:
        return ServerVad.model_validate(members or raw)
    except ValidationError as exc:
        raise ApiError(
            400, f"chunking_strategy: {problems(exc.errors(), whole='value')}", code="invalid_field"
        ) from None


def subtitles_of(
    max_line_width: int | None, max_line_count: int | None, highlight_words: bool, response_format: str
) -> SubtitleRequest | None:
    """The job's `subtitles` from our form fields (whisper-asr-webservice's and WhisperX's names), None when
    none is given. They lay out srt and vtt cues only: with another response_format they are a 400."""
    if max_line_width is None and max_line_count is None and not highlight_words:
        return None
    if response_format not in ("srt", "vtt"):
        message = "max_line_width, max_line_count and highlight_words need response_format srt or vtt"
        raise ApiError(400, message, code="invalid_field")
    try:
        return SubtitleRequest(
            max_line_width=max_line_width, max_line_count=max_line_count, highlight_words=highlight_words
        )
    except ValidationError as exc:
        raise ApiError(400, problems(exc.errors(), whole="request"), code="invalid_field") from None


def failed(result: Result) -> ApiError:
    """The ApiError of a failed job (its error code kept as OpenAI's `code`)."""
    code = result.error.code if result.error else "InternalError"
    message = result.error.message if result.error else "the transcription failed"
    if code == "QuotaExceeded":  # the worker's half of the quota check: the same answer as the gateway's
        return quota_exceeded(message)
    status, kind = _STATUS.get(code, (500, "server_error"))
    return ApiError(status, message, type=kind, code=code)


def quota_exceeded(message: str) -> ApiError:
    """The tenant's audio quota for today is used up (OpenAI's 429 insufficient_quota)."""
    return ApiError(429, message, type="insufficient_quota", code="insufficient_quota")


def concurrency_exceeded(limit: int) -> ApiError:
    """The tenant has `max_concurrent_jobs` jobs queued or running (429, as OpenAI's rate limits are)."""
    message = f"{limit} jobs of this tenant are already queued or running (max_concurrent_jobs); send it when one has finished"
    return ApiError(429, message, type="requests", code="concurrency_limit_exceeded")


def timed_out(job_id: str, seconds: float) -> ApiError:
    """No result in time: the job goes on (its upload stays until it expires)."""
    message = f"no result within {seconds:g} s; job {job_id} is still queued or running"
    return ApiError(504, message, type="server_error", code="timeout")


def broker_lost(exc: Exception) -> ApiError:
    return ApiError(503, str(exc), type="server_error", code="broker_unavailable")


def compression_ratio(text: str) -> float:
    """As openai-whisper computes it: bytes of the text over bytes of its zlib compression."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def render(
    result: Result,
    fmt: ResponseFormat,
    task: str,
    temperature: float = 0.0,
    *,
    granularities: Sequence[str] = ("segment",),
    subtitles: SubtitleOptions = PLAIN,
) -> tuple[str, str]:
    """(body, media type) of a completed result in OpenAI's `response_format`; `granularities` shape
    verbose_json, `subtitles` srt and vtt."""
    segments = result.segments or []
    if fmt == "text":
        return (result.text or "") + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return to_srt(segments, subtitles=subtitles), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return to_vtt(segments, subtitles=subtitles), "text/vtt; charset=utf-8"
    if fmt == "json":
        return json.dumps({"text": result.text or "", **logprobs(result), "usage": usage(result)}), "application/json"
    if fmt == "diarized_json":
        return json.dumps(diarized(result, task)), "application/json"
    return json.dumps(verbose(result, task, temperature, granularities)), "application/json"


def logprobs(result: Result) -> dict[str, Any]:
    """OpenAI's `logprobs` (every text token's, in order) when the job asked for them, else nothing."""
    segments = result.segments or []
    if not any(s.logprobs is not None for s in segments):
        return {}
    return {"logprobs": [p.model_dump() for s in segments for p in s.logprobs or ()]}


def usage(result: Result) -> dict[str, Any]:
    """OpenAI's usage of a duration-billed model: the seconds of audio transcribed."""
    return {"type": "duration", "seconds": round(result.duration_seconds or 0.0, 3)}


def diarized(result: Result, task: str) -> dict[str, Any]:
    """OpenAI's diarized_json: the text, and segments of one speaker each."""
    return {
        "task": task,
        "duration": result.duration_seconds,
        "text": result.text or "",
        "segments": diarized_segments(result),
        "usage": usage(result),
    }


def diarized_segments(result: Result) -> list[dict[str, Any]]:
    """OpenAI's `transcript.text.segment`s: diarized_json's segments, and a diarized stream's events."""
    return [
        {
            "type": "transcript.text.segment",
            "id": f"seg_{i:03d}",
            "start": s.start,
            "end": s.end,
            "text": s.text,
            "speaker": s.speaker or "A",
        }
        for i, s in enumerate(result.segments or [])
    ]


def verbose(
    result: Result, task: str, temperature: float = 0.0, granularities: Sequence[str] = ("segment",)
) -> dict[str, Any]:
    """OpenAI's verbose_json: `segments` for the segment granularity (the default), `words` for the word one."""
    document: dict[str, Any] = {
        "task": task,
        "language": result.language,
        "language_probability": result.language_probability,  # ours: detection's, null when none ran
        "duration": result.duration_seconds,
        "text": result.text or "",
    }
    if "segment" in granularities or not granularities:
        document["segments"] = [
            {
                "id": i,
                "seek": round(s.start * 100),  # in 10 ms frames, as OpenAI's
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": temperature,  # the one asked for: whisper.cpp's fallback is off
                "avg_logprob": s.avg_logprob,
                "compression_ratio": compression_ratio(s.text),
                # null only from the pywhispercpp fallback backend
                "no_speech_prob": s.no_speech_prob,
                **({"speaker": s.speaker} if s.speaker else {}),
            }
            for i, s in enumerate(result.segments or [])
        ]
    if "word" in granularities:
        # OpenAI's words carry no leading space; whisper's word pieces do.
        document["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in result.segments or []
            for w in s.words or []
        ]
    document["usage"] = usage(result)
    return document
