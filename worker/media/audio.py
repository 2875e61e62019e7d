"""Decode any audio ffmpeg reads into 16 kHz mono samples (the only module that runs ffmpeg).

One ffmpeg process per input, as openai-whisper's `load_audio` does: ffmpeg demuxes, decodes,
downmixes and resamples (its resampler is band-limited) straight to 16 kHz mono s16le. Its input
report on stderr carries the duration the container declares, which is how a truncated file is
told apart from a short one.

ffmpeg reads only the file it is given: its input may use the `file` protocol only
(`-protocol_whitelist file`), the path is passed as `file:PATH` (so no name is taken for a
protocol), and the input must be one of the audio/video containers in `DEMUXERS`
(`-format_whitelist`). Playlists (HLS .m3u8, DASH), concat lists (ffconcat), image sequences and
other demuxers that open further URLs or files are refused whatever the file is called, so an
uploaded "audio" file cannot make the worker fetch a URL or read another local file.

A job's audio goes to a PCM file in its work directory (`decode_to_file`), never into memory as a
whole: 16 kHz s16le is 1.9 MB per audio minute, and a 4-hour recording held as float32, plus the
copies made on the way, took gigabytes. Readers take blocks or one chunk's samples from the file,
so a worker's memory depends on chunk size and concurrency, not on the recording's length.
"""

import io
import re
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile

from worker.errors import AudioDecodeError, AudioTooLong, EmptyAudio, InputNotFound

SAMPLE_RATE = 16000

# Decoded audio may fall short of the declared duration by a frame or two of encoder
# padding (under 0.1 s for every file in ../shared/audio); more than this is a truncation.
_TRUNCATION_TOLERANCE_SECONDS = 0.5
_VIDEO_STREAM = re.compile(r"^\s*Stream #0:\d+.*: Video: .*$", re.MULTILINE)
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)", re.MULTILINE)
_PCM_BITRATE = re.compile(r"Audio: pcm_s16le, 16000 Hz, [^\n]*?(\d+) kb/s")
_NOT_ON_WHITELIST = re.compile(r"\[(\w+) @ [^]]*\] Format not on whitelist")

# The containers ffmpeg may demux (`ffmpeg -demuxers` names; "mov" covers mp4/m4a/3gp, "matroska"
# webm). None of them opens another file or URL. Not here on purpose: hls, dash, concat, image2*,
# ffmetadata, lavfi, rtp/rtsp/sdp, webm_dash_manifest and every other demuxer.
DEMUXERS = (
    "wav,w64,flac,mp3,ogg,mov,matroska,webm,aac,aiff,amr,amrnb,amrwb,au,caf,wv,ape,asf,avi,"
    "mpeg,mpegts,flv,ac3,eac3,dts,truehd,mlp,tta,voc,xwma,mpc,mpc8,gsm,loas"
)


class Audio(Protocol):
    """16 kHz mono samples read piecewise, as float32 in [-1, 1]."""

    @property
    def n_samples(self) -> int: ...

    def read(self, start: int, end: int) -> np.ndarray: ...


class PcmFile:
    """Decoded audio on disk (16 kHz mono s16le), read one range at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n_samples = path.stat().st_size // 2

    @property
    def seconds(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def read(self, start: int, end: int) -> np.ndarray:
        start, end = max(0, start), min(end, self.n_samples)
        with open(self.path, "rb") as pcm:
            pcm.seek(2 * start)
            data = pcm.read(2 * max(0, end - start))
        return _float(data)

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive blocks of `size` samples (the last one shorter), as float32."""
        with open(self.path, "rb") as pcm:
            while data := pcm.read(2 * size):
                yield _float(data)


class InMemoryAudio:
    """Samples already in memory (short clips, tests, benchmarks) behind the same interface."""

    def __init__(self, samples: np.ndarray) -> None:
        self.samples = samples
        self.n_samples = samples.size

    def read(self, start: int, end: int) -> np.ndarray:
        return self.samples[max(0, start) : end]

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.n_samples, size):
            yield self.samples[start : start + size]


def _float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def decode_to_file(path: Path, dest: Path, *, max_seconds: float | None = None) -> PcmFile:
    """Decode `path` into the PCM file `dest`.

    Raises InputNotFound for a missing path or a directory, EmptyAudio for input with no
    samples, AudioTooLong beyond `max_seconds`, and AudioDecodeError for anything that is
    not audio, is corrupt, or is truncated.
    """
    path = _checked_input(path)
    report = _run_ffmpeg(path, dest, max_seconds)
    audio = PcmFile(dest)
    _check(path.name, audio.seconds, _declared_seconds(report), max_seconds)
    return audio


def _checked_input(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"{path.name}: no such file")
    if not path.is_file():
        raise InputNotFound(f"{path.name}: not a regular file")
    if path.stat().st_size == 0:
        raise EmptyAudio(f"{path.name}: the file is empty (zero bytes)")
    return path


class ChannelsPcm:
    """Decoded audio on disk with every channel kept (16 kHz s16le, interleaved); each channel read as mono."""

    def __init__(self, path: Path, n_channels: int) -> None:
        self.path = path
        self.n_channels = n_channels
        self.n_samples = path.stat().st_size // (2 * n_channels)

    def channel(self, number: int) -> "ChannelOf":
        if not 0 <= number < self.n_channels:
            raise ValueError(f"channel {number} of {self.n_channels}")
        return ChannelOf(self, number)

    def read_frames(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of every channel: shape (n, n_channels), float32."""
        start, end = max(0, start), min(end, self.n_samples)
        with open(self.path, "rb") as pcm:
            pcm.seek(2 * self.n_channels * start)
            data = pcm.read(2 * self.n_channels * max(0, end - start))
        return _float(data).reshape(-1, self.n_channels)


class ChannelOf:
    """One channel of a ChannelsPcm, as mono Audio."""

    def __init__(self, pcm: ChannelsPcm, number: int) -> None:
        self.pcm, self.number, self.n_samples = pcm, number, pcm.n_samples

    def read(self, start: int, end: int) -> np.ndarray:
        return np.ascontiguousarray(self.pcm.read_frames(start, end)[:, self.number])


def decode_channels(path: Path, dest: Path, *, max_seconds: float | None = None) -> ChannelsPcm:
    """Decode `path` into `dest` keeping its channels apart (one speaker per channel, as calls are
    recorded); the errors of decode_to_file."""
    path = _checked_input(path)
    report = _run_ffmpeg(path, dest, max_seconds, mono=False)
    audio = ChannelsPcm(dest, _output_channels(report))
    _check(path.name, audio.n_samples / SAMPLE_RATE, _declared_seconds(report), max_seconds)
    return audio


def _output_channels(report: str) -> int:
    """Channels of the s16le output, from its bit rate in ffmpeg's report (16 kHz x 16 bit = 256 kb/s each):
    exact for raw PCM, and free of ffmpeg's many channel-layout names."""
    output = report.split("Output #0", 1)[-1]
    match = _PCM_BITRATE.search(output)
    if match is None or int(match.group(1)) % 256:
        raise AudioDecodeError(f"could not tell the channels of the decoded audio ({_reason(output)})")
    return int(match.group(1)) // 256


def decode_audio(path: Path, *, max_seconds: float | None = None) -> np.ndarray:
    """All samples of `path` in memory, as 16 kHz mono float32 (for clips; jobs use decode_to_file)."""
    with tempfile.TemporaryDirectory(prefix="decode-") as scratch:
        audio = decode_to_file(path, Path(scratch) / "audio.pcm", max_seconds=max_seconds)
        return audio.read(0, audio.n_samples)


def _run_ffmpeg(path: Path, dest: Path, max_seconds: float | None, *, mono: bool = True) -> str:
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
        # The input reads this one local file, as one of DEMUXERS (see the module docstring).
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        DEMUXERS,
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
        *(["-ac", "1"] if mono else []),
        "-ar",
        str(SAMPLE_RATE),
        "-y",
        f"file:{dest}",
    ]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    report = done.stderr.decode(errors="replace").replace(str(path), path.name)
    if done.returncode != 0:
        dest.unlink(missing_ok=True)
        if "matches no streams" in report:
            raise EmptyAudio(f"{path.name}: no audio stream")
        if refused := _NOT_ON_WHITELIST.search(report):
            raise AudioDecodeError(
                f"{path.name}: a {refused.group(1)} file, not an audio container the worker reads (playlists, concat"
                " lists and image sequences name other inputs, which are never opened)"
            )
        raise AudioDecodeError(f"{path.name}: not decodable audio: corrupt, truncated or not audio ({_reason(report)})")
    return report


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
    pcm = _pcm16(samples)
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
    return _float(pcm)


def encode_flac(samples: np.ndarray) -> bytes:
    """Samples as 16-bit 16 kHz mono FLAC: lossless for what the decoder returns, about half the bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, _pcm16(samples), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    """Samples of a 16 kHz mono FLAC written by encode_flac; AudioDecodeError for anything else."""
    try:
        pcm, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(f"chunk audio is not FLAC ({exc})") from None
    if rate != SAMPLE_RATE or pcm.shape[1] != 1:
        raise AudioDecodeError(f"chunk audio must be 16 kHz mono, not {rate} Hz with {pcm.shape[1]} channel(s)")
    if pcm.shape[0] == 0:
        raise EmptyAudio("chunk audio has no samples")
    return pcm[:, 0].astype(np.float32) / 32768.0


def _pcm16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
