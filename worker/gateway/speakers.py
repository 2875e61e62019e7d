"""Known speakers as OpenAI takes them: `known_speaker_names[]` and `known_speaker_references[]`.

A reference is a data URL (`data:audio/wav;base64,...`) of a 2-10 s clip of that speaker, at most 4 of
them (OpenAI's limits). The gateway checks what it can without decoding audio (the counts, the names,
the data URLs' form and size) and stores each clip as an upload, which the job names by URL like its
audio; the worker fetches, decodes and checks the clips' length and level (InvalidReference, a 400).
On /v1/jobs a reference may also be an http(s) URL, fetched by the worker under its URL rules.
A waiting request's clips are deleted with its audio when the result comes; others expire with the
uploads' TTL.
"""

import base64
import binascii
import io
import re
from collections.abc import Sequence

from worker.gateway.openai_api import ApiError
from worker.gateway.uploads import UploadStore
from worker.messages import MAX_KNOWN_SPEAKERS, MAX_SPEAKER_NAME_CHARS

# A clip of 10 s is 320 kB as 16 kHz 16-bit mono WAV, 1.9 MB at 48 kHz stereo; more is no clip of 10 s
# in any format a person would send.
MAX_REFERENCE_BYTES = 2 * 2**20
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[\w.+-]+)*;base64,(?P<data>.*)", re.DOTALL)


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, code="invalid_known_speakers")


def check_known(names: Sequence[str], references: Sequence[str], *, diarized: bool) -> None:
    """The counts and names as OpenAI checks them; ApiError(400) otherwise."""
    if not names and not references:
        return
    if not diarized:
        raise _invalid('known speakers need diarization (model gpt-4o-transcribe-diarize, or diarize="speakers")')
    if len(names) != len(references):
        raise _invalid(f"{len(names)} known_speaker_names for {len(references)} known_speaker_references")
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise _invalid(f"at most {MAX_KNOWN_SPEAKERS} known speakers")
    if len(set(names)) != len(names):
        raise _invalid("known_speaker_names: each name once")
    for name in names:
        if not name.strip() or len(name) > MAX_SPEAKER_NAME_CHARS or not name.isprintable():
            raise _invalid(f"known_speaker_names: {name[:80]!r} is not a name of 1-{MAX_SPEAKER_NAME_CHARS} characters")


def clip_of(reference: str) -> bytes:
    """The bytes of a data URL of audio; ApiError(400) for anything else."""
    match = _DATA_URL.fullmatch(reference.strip())
    if match is None:
        raise _invalid("known_speaker_references: each must be a data URL, data:audio/...;base64,...")
    if not match["type"].startswith("audio/") and match["type"] != "application/octet-stream":
        raise _invalid(f"known_speaker_references: {match['type']} is not audio")
    if len(match["data"]) > MAX_REFERENCE_BYTES * 4 // 3 + 4:
        raise _invalid(f"known_speaker_references: a clip is over {MAX_REFERENCE_BYTES} bytes")
    try:
        clip = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("known_speaker_references: not valid base64") from None
    if not clip:
        raise _invalid("known_speaker_references: a clip is empty")
    return clip


def stored(
    names: Sequence[str], references: Sequence[str], uploads: UploadStore, public_url: str, *, urls: bool = False
) -> tuple[list[dict], list[str]]:
    """The job's `known_speakers` (each clip stored as an upload; `urls`: an http(s) reference is passed
    on as it is) and the uploads' tokens. Checked before anything is stored."""
    clips = [None if urls and r.startswith(("http://", "https://")) else clip_of(r) for r in references]
    known, tokens = [], []
    for name, reference, clip in zip(names, references, clips, strict=True):
        if clip is None:
            known.append({"name": name, "audio": {"url": reference}})
            continue
        token, _ = uploads.save(io.BytesIO(clip))
        tokens.append(token)
        known.append({"name": name, "audio": {"url": f"{public_url}/uploads/{token}"}})
    return known, tokens
