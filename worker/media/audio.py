"""Decode any audio ffmpeg reads into 16 kHz mono float32 samples (the only module that runs ffmpeg).

One ffmpeg process per input, as openai-whisper's `load_audio` does: ffmpeg demuxes, decodes,
downmixes and resamples (its resampler is band-limited) straight to 16 kHz mono s16le on a
pipe. Its input report on stderr carries the duration the container declares, which is how
a truncated file is told apart from a short one.
"""

import re
import subprocess
import wave
from pathlib import Path

import numpy as np

from worker.errors import AudioDecodeError, AudioTooLong, EmptyAudio, InputNotFound

SAMPLE_RATE = 16000

# Decoded audio may fall short of the declared duration by a frame or two of encoder
# padding (under 0.1 s for every file in ../shared/audio); more than this is a truncation.
_TRUNCATION_TOLERANCE_SECONDS = 0.5
_VIDEO_STREAM = re.compile(r"^\s*Stream #0:\d+.*: Video: .*$", re.MULTILINE)
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)", re.MULTILINE)


def decode_audio(path: Path, *, max_seconds: float | None = None) -> np.ndarray:
    """Samples of `path` as 16 kHz mono float32 in [-1, 1].

    Raises InputNotFound for a missing path or a directory, EmptyAudio for input with no
    samples, AudioTooLong beyond `max_seconds`, and AudioDecodeError for anything that is
    not audio, is corrupt, or is truncated.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"{path.name}: no such file")
    if not path.is_file():
        raise InputNotFound(f"{path.name}: not a regular file")
    if path.stat().st_size == 0:
        raise EmptyAudio(f"{path.name}: the file is empty (zero bytes)")
    pcm, report = _run_ffmpeg(path, max_seconds)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    _check(path.name, samples.size / SAMPLE_RATE, _declared_seconds(report), max_seconds)
    return samples


def _run_ffmpeg(path: Path, max_seconds: float | None) -> tuple[bytes, str]:
    # Decode one second past the limit at most: enough to tell it is too long, without
    # holding hours of samples in memory.
    limit = ["-t", f"{max_seconds + 1:.3f}"] if max_seconds is not None else []
    command = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-xerror",
        "-threads",
        "0",
        # "file:" keeps a name such as "a:b.wav" from being read as a protocol.
        "-i",
        f"file:{path}",
        "-map",
        "0:a:0",
        *limit,
        "-f",
        "s16le",
        "-acodec",
        "pcm_s16le",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-",
    ]
    done = subprocess.run(command, capture_output=True)
    report = done.stderr.decode(errors="replace").replace(str(path), path.name)
    if done.returncode != 0:
        if "matches no streams" in report:
            raise EmptyAudio(f"{path.name}: no audio stream")
        raise AudioDecodeError(f"{path.name}: not decodable audio: corrupt, truncated or not audio ({_reason(report)})")
    return done.stdout, report


def _check(name: str, seconds: float, declared: float | None, max_seconds: float | None) -> None:
    if seconds == 0:
        raise EmptyAudio(f"{name}: the audio has no samples (zero length)")
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(f"{name}: {seconds:.1f} s of audio is longer than the limit of {max_seconds:g} s")
    if declared is not None and seconds < declared - _TRUNCATION_TOLERANCE_SECONDS:
        raise AudioDecodeError(
            f"{name}: truncated: the file declares {declared:.1f} s of audio but only {seconds:.1f} s decode"
        )


def _declared_seconds(report: str) -> float | None:
    """The audio duration the container declares, from ffmpeg's input report.

    None when it declares none ("Duration: N/A") or when a video stream may be what makes
    the container longer than its sound (cover art, an "attached pic", does not count).
    """
    inputs = report.split("Stream mapping:", 1)[0]
    match = _DURATION.search(inputs)
    if match is None or any("(attached pic)" not in line for line in _VIDEO_STREAM.findall(inputs)):
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _reason(report: str) -> str:
    """The most telling line of ffmpeg's stderr."""
    lines = [line.strip() for line in report.splitlines() if line.strip()]
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
