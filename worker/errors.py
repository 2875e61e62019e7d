"""The worker's exception tree.

    WorkerError
    ├── PermanentError          retrying cannot help: report the failure, dead-letter the job
    │   ├── InvalidJob          the job message is not valid JSON or breaks the contract
    │   ├── AudioDecodeError    the audio cannot be decoded (not audio, corrupt, empty, too long)
    │   ├── UnknownModel        the model name is not one the worker knows
    │   ├── ModelUnavailable    no source (local file, download, installed package) could provide the model
    │   └── ModelConversionError  a CTranslate2 model could not be converted to ggml
    ├── TransientError          may succeed later: retry with backoff
    │   ├── DownloadFailed      an HTTP download failed or its content did not verify
    │   ├── CallbackFailed      the job's callback URL did not accept the result
    │   └── BrokerUnavailable   the message broker cannot be reached
    └── TranscriptionError      whisper.cpp failed on audio that decoded fine
"""


class WorkerError(Exception):
    """Base class for every error the worker raises on purpose."""


class PermanentError(WorkerError):
    """Retrying the same job cannot succeed."""


class TransientError(WorkerError):
    """The same job may succeed if retried later."""


class InvalidJob(PermanentError):
    """The job message is not valid JSON or violates the job schema."""


class AudioDecodeError(PermanentError):
    """The audio cannot be decoded into samples we can transcribe."""


class UnknownModel(PermanentError):
    """The requested model name is not in the worker's model table."""


class ModelUnavailable(PermanentError):
    """No configured source could provide a valid model file."""


class ModelConversionError(PermanentError):
    """A CTranslate2 model directory could not be converted to ggml."""


class DownloadFailed(TransientError):
    """An HTTP download failed, timed out, or did not match its checksum."""


class CallbackFailed(TransientError):
    """The job's callback URL did not accept the result in time."""


class BrokerUnavailable(TransientError):
    """The message broker cannot be reached."""


class TranscriptionError(WorkerError):
    """whisper.cpp returned an error for audio that decoded fine."""
