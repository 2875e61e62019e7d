"""The worker's exception tree. A failed result's `error.code` is the class name.

WorkerError
├── PermanentError          retrying cannot help: report the failure, dead-letter the job
│   ├── InvalidJob          the job breaks the contract (schema, unknown language or format)
│   │   ├── MalformedJob    the body is not a UTF-8 JSON object of acceptable size
│   │   ├── InputNotAllowed the input is outside what the worker may read or fetch
│   │   ├── ModelNotAllowed the model is not in ALLOWED_MODELS (refused before any download)
│   │   ├── InvalidChunkTask  a fanned-out chunk task breaks the chunk contract
│   │   ├── SingleChannel   diarize "channels" on audio whose channels cannot tell speakers apart
│   │   └── InvalidReference  a known speaker's clip is not 2-10 s of audible audio
│   ├── UnknownJob          a chunk task names a job that is not being gathered (ended, or never was)
│   ├── ChunkFailed         a chunk of a fanned-out job failed (its cause in the message)
│   ├── InputNotFound       the input path or URL does not exist (or is not a file)
│   ├── InputTooLarge       the download is over MAX_DOWNLOAD_BYTES
│   ├── DownloadRejected    the server refused the URL (HTTP 4xx) or redirected too often
│   ├── AudioDecodeError    the audio cannot be decoded (not audio, corrupt, truncated)
│   │   ├── EmptyAudio      the input holds no audio samples at all
│   │   └── AudioTooLong    the audio is longer than MAX_AUDIO_SECONDS
│   ├── QuotaExceeded       the audio is longer than the job's quota_seconds (its tenant's quota left)
│   ├── UnknownModel        the model name is not one the worker knows
│   ├── ModelUnavailable    no source (local file, download, installed package) could provide the model
│   └── ModelConversionError  a CTranslate2 model could not be converted to ggml
├── TransientError          may succeed later: retry with backoff
│   ├── DownloadFailed      an HTTP download failed, stalled or did not verify
│   ├── CallbackFailed      the job's callback URL did not accept the result
│   ├── GatherTimeout       a fanned-out job's chunk results stopped coming back
│   └── BrokerUnavailable   the gateway cannot reach the broker
└── TranscriptionError      whisper.cpp failed on audio that decoded fine
"""


class WorkerError(Exception):
    """Base class for every error the worker raises on purpose."""


class PermanentError(WorkerError):
    """Retrying the same job cannot succeed."""


class TransientError(WorkerError):
    """The same job may succeed if retried later."""


class InvalidJob(PermanentError):
    """The job message violates the job schema."""


class MalformedJob(InvalidJob):
    """The message body is empty, too large, not UTF-8, not JSON, or not a JSON object."""


class InputNotAllowed(InvalidJob):
    """The audio path escapes INPUT_DIR, or the URL's scheme or host is not allowed."""


class ModelNotAllowed(InvalidJob):
    """The job names a model the operator did not allow (ALLOWED_MODELS); nothing is downloaded."""


class InvalidChunkTask(InvalidJob):
    """A chunk task's headers or audio break the chunk contract (worker/messages/fanout.py)."""


class SingleChannel(InvalidJob):
    """diarize "channels" on a recording whose channels cannot tell speakers apart (one channel, the
    same sound on every channel, or more channels than speakers a job may have)."""


class InvalidReference(InvalidJob):
    """A known speaker's reference clip cannot name anyone: not audio, silent, under 2 s or over 10 s."""


class UnknownJob(PermanentError):
    """A chunk task for a job whose coordinator gathers no more (it ended) or never existed."""


class ChunkFailed(PermanentError):
    """A chunk of a fanned-out job failed on the worker that took it, or killed every worker that tried."""


class InputNotFound(PermanentError):
    """The audio path does not exist or is not a regular file; the URL answered 404/410."""


class InputTooLarge(PermanentError):
    """The audio at the URL is larger than MAX_DOWNLOAD_BYTES."""


class DownloadRejected(PermanentError):
    """The audio URL answered another 4xx status, or redirected in a loop or too often."""


class AudioDecodeError(PermanentError):
    """The audio cannot be decoded into samples we can transcribe."""


class EmptyAudio(AudioDecodeError):
    """The input decodes to no samples (a zero-byte file, a WAV header with no frames)."""


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the configured maximum."""


class QuotaExceeded(PermanentError):
    """The decoded audio is longer than what its tenant has left of its daily quota (Job.quota_seconds)."""


class UnknownModel(PermanentError):
    """The requested model name is not in the worker's model table."""


class ModelUnavailable(PermanentError):
    """No configured source could provide a valid model file."""


class ModelConversionError(PermanentError):
    """A CTranslate2 model directory could not be converted to ggml."""


class DownloadFailed(TransientError):
    """An HTTP download failed, stalled, timed out, or did not match its checksum."""


class CallbackFailed(TransientError):
    """The job's callback URL did not accept the result in time."""


class GatherTimeout(TransientError):
    """No chunk result of a fanned-out job came back for FANOUT_GATHER_TIMEOUT_SECONDS."""


class TranscriptionError(WorkerError):
    """whisper.cpp returned an error for audio that decoded fine."""


class BrokerUnavailable(TransientError):
    """The gateway cannot reach the broker, or the broker did not take the job."""
