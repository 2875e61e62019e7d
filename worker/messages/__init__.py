"""The wire contract: job messages in, result and progress messages out (pydantic v2, JSON).

A job is validated once, here, at the edge (`parse_job`); everything after trusts it.
"""

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AnyUrl, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.errors import InvalidJob, MalformedJob
from worker.formats import Format, SubtitleOptions

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # the gateway's tenant names (and key digests)

# A job is a small JSON document; anything bigger is a mistake or an attack, and is
# rejected before it is parsed.
MAX_JOB_BYTES = 64 * 1024
# whisper keeps at most 224 prompt tokens; a prompt is cut to its last ones. 2000 characters is ample.
MAX_PROMPT_CHARS = 2000
# Pieces of one fanned-out chunk (speech regions of at least ~0.8 s with their padding: ~30 in 24 s).
MAX_CHUNK_PIECES = 200
# Speakers one job may ask for (and channels a "channels" job may have): labels A..T.
MAX_SPEAKERS = 20
# Known speakers of a diarized job, and their reference clips' length: OpenAI's limits.
MAX_KNOWN_SPEAKERS = 4
REFERENCE_SECONDS = (2.0, 10.0)
MAX_SPEAKER_NAME_CHARS = 64

# whisper.cpp's language codes, in its own order (whisper_lang_str(0..whisper_lang_max_id()));
# tests/test_messages.py checks this list against the installed libwhisper.
LANGUAGES = frozenset(
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue".split()
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioSource(Strict):
    """Exactly one of `url` (http/https) or `path` (relative to INPUT_DIR, no escapes).

    What a URL or path may point at (scheme, host, staying inside INPUT_DIR) is checked by the
    handler before it touches either, so that those refusals carry their own error code.
    """

    url: AnyUrl | None = None
    path: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "AudioSource":
        if (self.url is None) == (self.path is None):
            raise ValueError("audio needs exactly one of 'url' or 'path'")
        return self


class VadRequest(Strict):
    """A job's speech-detection tuning; what it leaves out is the worker's (Settings VAD_*)."""

    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    min_speech_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None
    min_silence_ms: Annotated[int, Field(ge=0, le=10_000)] | None = None
    speech_pad_ms: Annotated[int, Field(ge=0, le=5_000)] | None = None


class KnownSpeaker(Strict):
    """A speaker a diarized job names: segments in their voice are labelled `name` (a 2-10 s clip of
    them speaking, fetched under the same rules as the job's audio)."""

    name: Annotated[str, Field(min_length=1, max_length=MAX_SPEAKER_NAME_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")]
    audio: AudioSource


class SubtitleRequest(Strict):
    """How a job's srt and vtt cues are laid out for reading (worker.formats.SubtitleOptions: what each does)."""

    max_line_width: Annotated[int, Field(ge=1, le=1000)] | None = None  # characters per line
    max_line_count: Annotated[int, Field(ge=1, le=10)] | None = None  # lines per cue
    highlight_words: bool = False

    @model_validator(mode="after")
    def _count_needs_width(self) -> "SubtitleRequest":
        if self.max_line_count is not None and self.max_line_width is None:
            raise ValueError("max_line_count needs max_line_width")
        return self

    @property
    def needs_word_times(self) -> bool:
        """Whether the cues are timed by whisper's word times (without them, cues split by line count are
        timed by their share of the segment's characters, and no word is highlighted)."""
        return self.highlight_words or self.max_line_count is not None

    def options(self) -> SubtitleOptions:
        return SubtitleOptions(**self.model_dump())


class Job(Strict):
    """A transcription request."""

    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN)]
    audio: AudioSource
    model: str | None = None
    language: str | None = Field(default=None, description="language code, or 'auto' / null to detect")
    # The languages detection may choose from (OpenAI's `languages`), when `language` is not given.
    languages: Annotated[tuple[str, ...], Field(max_length=len(LANGUAGES))] = ()
    task: Literal["transcribe", "translate"] = "transcribe"
    # Text that conditions the decoder of every chunk (spellings, names, style), as OpenAI's `prompt`.
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    # Words and names to spell as given (OpenAI's `keywords`): folded into the prompt (`decoder_prompt`).
    keywords: Annotated[tuple[Annotated[str, Field(min_length=1, max_length=100)], ...], Field(max_length=100)] = ()
    # 0: greedy, repeatable. Above 0 whisper samples, and the text changes from run to run.
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # Each segment's words with their times (whisper.cpp's token timestamps; no measurable cost,
    # docs/performance.md).
    word_timestamps: bool = False
    # Each segment's text tokens with their log probabilities (OpenAI's include[]=logprobs).
    logprobs: bool = False
    # Who spoke when: "channels" = one speaker per channel (calls), "speakers" = voices clustered (a
    # mono meeting), with the count given (num_speakers) or estimated within min/max_speakers.
    diarize: Literal["off", "channels", "speakers"] = "off"
    num_speakers: Annotated[int, Field(ge=1, le=MAX_SPEAKERS)] | None = None
    min_speakers: Annotated[int, Field(ge=1, le=MAX_SPEAKERS)] | None = None
    max_speakers: Annotated[int, Field(ge=1, le=MAX_SPEAKERS)] | None = None
    # diarize "speakers": voices to name (the closest cluster to each clip, when close enough).
    known_speakers: Annotated[tuple[KnownSpeaker, ...], Field(max_length=MAX_KNOWN_SPEAKERS)] = ()
    # Speech detection: null = the worker's CHUNKING; false = no VAD (the energy splitter: everything
    # loud is transcribed); true = VAD with the worker's settings; an object = VAD tuned by the job.
    vad: VadRequest | bool | None = None
    formats: tuple[Format, ...] = ("json",)
    # How the srt and vtt formats lay out their cues; absent: a cue per segment, on one line.
    subtitles: SubtitleRequest | None = None
    callback_url: AnyUrl | None = None
    # Seconds of audio the job may hold (the gateway: what its tenant has left of its daily quota): longer
    # audio fails with QuotaExceeded once decoded, before any transcription.
    quota_seconds: Annotated[float, Field(gt=0)] | None = None
    # Who the job is for: the gateway sets its tenant; an upstream service may name one (it is trusted, as
    # everything on the queue is). Echoed in the result and counted on the worker's /metrics by tenant.
    tenant: Annotated[str, Field(pattern=TENANT_PATTERN)] | None = None

    @property
    def decoder_prompt(self) -> str | None:
        """The prompt every chunk is decoded with: the job's, then its keywords as a list ("A, B, C."),
        last, as whisper keeps the end of a long prompt and weighs what it saw last most."""
        glossary = ", ".join(self.keywords) + "." if self.keywords else None
        return " ".join(p for p in (self.prompt, glossary) if p) or None

    @property
    def needs_word_times(self) -> bool:
        """Whether the job's chunks are transcribed with word times: asked for, or needed to cut segments
        at speaker turns (diarize "speakers") or at a channel's pauses (diarize "channels"), or to time its
        subtitles (`subtitle_words`); the result and the json format keep them only when asked for."""
        return self.word_timestamps or self.diarize != "off" or self.subtitle_words

    @property
    def subtitle_words(self) -> bool:
        """Whether the job writes srt or vtt cues timed by word times (highlight_words, max_line_count)."""
        writes_cues = "srt" in self.formats or "vtt" in self.formats
        return writes_cues and self.subtitles is not None and self.subtitles.needs_word_times

    @property
    def subtitle_options(self) -> SubtitleOptions:
        return self.subtitles.options() if self.subtitles is not None else SubtitleOptions()

    @model_validator(mode="after")
    def _speaker_counts(self) -> "Job":
        counts = (self.num_speakers, self.min_speakers, self.max_speakers)
        if any(c is not None for c in counts) and self.diarize != "speakers":
            raise ValueError('num_speakers, min_speakers and max_speakers need diarize "speakers"')
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError("min_speakers is above max_speakers")
        if self.num_speakers and (self.min_speakers or self.max_speakers):
            raise ValueError("give num_speakers, or min_speakers/max_speakers, not both")
        if self.known_speakers and self.diarize != "speakers":
            raise ValueError('known_speakers needs diarize "speakers"')
        names = [k.name for k in self.known_speakers]
        if len(set(names)) != len(names):
            raise ValueError("known_speakers: each name once")
        return self

    @model_validator(mode="after")
    def _prompt_and_languages(self) -> "Job":
        if self.keywords and len(self.decoder_prompt or "") > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt and keywords together are over {MAX_PROMPT_CHARS} characters")
        if self.language and self.languages:
            raise ValueError("give language, or the languages detection may choose from, not both")
        return self

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in values if v.lower() not in LANGUAGES]
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))}: not language codes whisper knows")
        return tuple(dict.fromkeys(v.lower() for v in values))

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value in (None, "", "auto"):
            return None
        if value.lower() not in LANGUAGES:
            raise ValueError(f"{value!r} is not a language code whisper knows (e.g. 'en', 'de', or 'auto')")
        return value.lower()


class ErrorInfo(Strict):
    code: str
    message: str


class Timings(Strict):
    queue_wait_seconds: float | None = None
    download_seconds: float = 0.0
    decode_seconds: float = 0.0
    transcribe_seconds: float = 0.0
    total_seconds: float = 0.0
    real_time_factor: float | None = None


class WordOut(Strict):
    word: str
    start: float
    end: float
    probability: float
    speaker: str | None = None  # diarized jobs only


class TokenLogprobOut(Strict):
    token: str
    bytes: list[int]
    logprob: float


class SegmentOut(Strict):
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: list[WordOut] | None = None  # only when the job asked for word_timestamps
    speaker: str | None = None  # diarized jobs only: "A", "B", ... in order of first appearance
    logprobs: list[TokenLogprobOut] | None = None  # only when the job asked for logprobs


class Result(Strict):
    """What the worker publishes for every job it finishes or gives up on."""

    job_id: str
    status: Literal["completed", "failed"]
    attempt: int = 1
    tenant: str | None = None  # the job's, when it named one
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
    # Problems that did not fail the job, e.g. a callback URL that stayed down.
    warnings: list[str] = Field(default_factory=list)
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ProgressEvent(Strict):
    job_id: str
    stage: Literal["queued", "downloading", "decoding", "transcribing", "publishing", "completed", "failed"]
    chunks_done: int = 0
    chunks_total: int = 0
    percent: float = 0.0
    # With "transcribing": the chunk that just finished (chunks finish in any order) and its text, the
    # transcript's text being every chunk's, in index order, joined by a space (empty ones skipped).
    chunk_index: int | None = None
    text: str | None = None
    logprobs: list[TokenLogprobOut] | None = None  # the chunk's text tokens', when the job asked for logprobs


def parse_job(body: bytes) -> Job:
    """The job in a message body.

    Raises MalformedJob when the body is not a UTF-8 JSON object of at most MAX_JOB_BYTES,
    InvalidJob when it is one but breaks the schema (both permanent).
    """
    document = _json_object(body)
    try:
        return Job.model_validate(document)
    except ValidationError as exc:
        raise InvalidJob(f"invalid job: {problems(exc.errors())}") from None


def problems(errors: list[dict], *, whole: str = "body", skip: int = 0) -> str:
    """pydantic's validation errors as one line: `field.path: message; ...` (`skip` drops leading path parts)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'][skip:]) or whole}: {e['msg']}" for e in errors)


def _json_object(body: bytes) -> dict:
    if not body:
        raise MalformedJob("invalid job: the message body is empty")
    if len(body) > MAX_JOB_BYTES:
        raise MalformedJob(f"invalid job: the message body is {len(body)} bytes, over the limit of {MAX_JOB_BYTES}")
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MalformedJob(f"invalid job: the message body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise MalformedJob(f"invalid job: the message body is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise MalformedJob(f"invalid job: the message body is a JSON {type(document).__name__}, not an object")
    return document


def job_id_of(body: bytes) -> str | None:
    """Best-effort job id from a body that failed validation (for the failed result)."""
    if len(body) > MAX_JOB_BYTES:
        return None
    try:
        value = json.loads(body).get("job_id")
    except (ValueError, AttributeError):
        return None
    return valid_job_id(value)


def valid_job_id(value: object) -> str | None:
    """`value` when it is a job id the contract allows, else None."""
    return value if isinstance(value, str) and re.fullmatch(JOB_ID_PATTERN, value) else None
