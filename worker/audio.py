"""Decode any audio ffmpeg reads into 16 kHz mono float32 samples (the only importer of pydub)."""

import tempfile
import wave
from pathlib import Path

import numpy as np
from pydub import AudioSegment
from pydub.exceptions import CouldntDecodeError

from worker.errors import AudioDecodeError

SAMPLE_RATE = 16000

# Ask ffmpeg itself to resample and downmix (its resampler is band-limited, pydub's
# audioop.ratecv is not), and to fail on decoding errors (-xerror) so that truncated or
# corrupt input is an error rather than a silently shorter transcript.
_FFMPEG_OUTPUT = ["-ar", str(SAMPLE_RATE), "-ac", "1", "-xerror"]


def decode_audio(path: Path, *, max_seconds: float | None = None) -> np.ndarray:
    """Samples of `path` as 16 kHz mono float32 in [-1, 1].

    Raises AudioDecodeError (permanent) for a missing file, something that is not audio or
    is corrupt, audio with no samples, or audio longer than `max_seconds`.
    """
    segment = _load(Path(path), max_seconds)
    segment = segment.set_channels(1).set_frame_rate(SAMPLE_RATE).set_sample_width(2)
    samples = np.frombuffer(segment.raw_data, dtype=np.int16).astype(np.float32) / 32768.0
    if samples.size == 0:
        raise AudioDecodeError(f"{Path(path).name}: the audio has no samples (zero length)")
    if max_seconds is not None and samples.size > max_seconds * SAMPLE_RATE:
        raise AudioDecodeError(
            f"{Path(path).name}: {samples.size / SAMPLE_RATE:.1f} s of audio is longer than the limit of {max_seconds:g} s"
        )
    return samples


def _load(path: Path, max_seconds: float | None) -> AudioSegment:
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path.name}: the file is empty (zero length)")
    # Decode one second past the limit at most: enough to tell it is too long, without
    # holding hours of samples in memory.
    limit = ["-t", f"{max_seconds + 1:.3f}"] if max_seconds is not None else []
    try:
        with tempfile.TemporaryDirectory(prefix="decode-") as scratch:
            # pydub reads files named *.wav itself, bypassing ffmpeg and its checks; a link
            # with a neutral name sends every input through ffmpeg, which probes the content.
            link = Path(scratch) / "input"
            link.symlink_to(path.resolve())
            return AudioSegment.from_file(link, parameters=[*_FFMPEG_OUTPUT, *limit])
    except CouldntDecodeError as exc:
        reason = _ffmpeg_reason(str(exc).replace(str(link), path.name))
        raise AudioDecodeError(f"{path.name}: not decodable audio: corrupt, truncated or not audio ({reason})") from None
    except IndexError:
        # pydub indexes ffprobe's list of audio streams: empty for a video without sound.
        raise AudioDecodeError(f"{path.name}: no audio stream") from None
    except (ValueError, KeyError) as exc:
        raise AudioDecodeError(f"{path.name}: not decodable audio ({exc})") from None


def _ffmpeg_reason(message: str) -> str:
    """The most telling line of ffmpeg's stderr, which pydub embeds in its exception text."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    telling = [line for line in lines if any(k in line.lower() for k in ("invalid", "error", "corrupt", "not"))]
    return (telling or lines or ["unknown reason"])[-1][:300]


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Write float samples as a 16 kHz mono 16-bit WAV (lossless for what decode_audio returns)."""
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def read_wav(path: Path) -> np.ndarray:
    """Samples of a 16 kHz mono 16-bit WAV written by write_wav, as float32."""
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
                raise AudioDecodeError(f"{Path(path).name}: expected 16 kHz mono 16-bit WAV")
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioDecodeError(f"{Path(path).name}: unreadable WAV ({exc})") from None
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
