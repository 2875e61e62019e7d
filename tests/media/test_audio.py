"""Decoding real recordings of every format in ../shared/audio, and bad input."""

import csv
import http.server
import shutil
import subprocess
import threading
import wave

import numpy as np
import pytest
from conftest import AUDIO_DIR

from worker.errors import AudioDecodeError, AudioTooLong, EmptyAudio, InputNotFound
from worker.media.audio import SAMPLE_RATE, decode_audio, read_wav, write_wav


def manifest() -> list[dict]:
    with open(AUDIO_DIR / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("row", manifest(), ids=lambda row: row["file"])
def test_every_shared_file_decodes_to_16k_mono_float(row):
    samples = decode_audio(AUDIO_DIR / row["file"])

    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size / SAMPLE_RATE - float(row["seconds"])) < 0.1
    assert 0.05 < np.abs(samples).max() <= 1.0


def test_stereo_is_downmixed_to_the_mean_of_both_channels():
    path = AUDIO_DIR / "fw_stereo_diarization.wav"  # 16 kHz stereo, different speech per channel
    with wave.open(str(path)) as wav:
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2) / 32768.0

    mono = decode_audio(path)

    assert mono.size == stereo.shape[0]
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=2 / 32768)


def test_wav_chunks_round_trip_exactly(tmp_path, jfk):
    write_wav(tmp_path / "chunk_0000.wav", jfk)
    np.testing.assert_array_equal(read_wav(tmp_path / "chunk_0000.wav"), jfk)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def test_audio_track_of_a_video_file_decodes(tmp_path):
    video = tmp_path / "talk.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=5",
        "-i",
        str(AUDIO_DIR / "jfk_inaugural_1961.flac"),
        "-shortest",
        "-c:a",
        "aac",
        str(video),
    )

    assert abs(decode_audio(video).size / SAMPLE_RATE - 11.0) < 0.2


def written(tmp_path, name: str, data: bytes):
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def truncated(tmp_path, name: str, keep: int):
    target = tmp_path / name
    target.write_bytes((AUDIO_DIR / name).read_bytes()[:keep])
    return target


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: truncated(d, "librivox_shakespeare_sonnet001.mp3", 200_001), "truncated: the file declares 53.3 s"),
        (lambda d: written(d, "notes.mp3", b"not audio at all"), "not decodable audio"),
        (lambda d: truncated(d, "jfk_inaugural_1961.flac", 300_000), "corrupt, truncated"),
        (lambda d: truncated(d, "ljspeech_LJ050-0131.wav", 100_000), "corrupt, truncated"),
        (lambda d: truncated(d, "librivox_sonnet001_first9s_m4a.m4a", 30_000), "corrupt, truncated"),
    ],
    ids=["truncated-mp3", "not-audio", "truncated-flac", "truncated-wav", "truncated-m4a"],
)
def test_bad_input_is_a_typed_error_with_a_clear_message(tmp_path, make, message):
    with pytest.raises(AudioDecodeError, match=message):
        decode_audio(make(tmp_path))


def header_only(path):
    write_wav(path, np.zeros(0, dtype=np.float32))  # a valid 44-byte WAV header and no frames
    return path


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: d / "missing.wav", InputNotFound, "no such file"),
        (lambda d: d, InputNotFound, "not a regular file"),
        (lambda d: written(d, "empty.mp3", b""), EmptyAudio, "zero bytes"),
        (lambda d: header_only(d / "header.wav"), EmptyAudio, "no samples"),
    ],
    ids=["missing", "directory", "zero-bytes", "wav-header-only"],
)
def test_missing_and_empty_input_have_their_own_errors(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        decode_audio(make(tmp_path))


def test_video_without_sound_has_no_audio_stream(tmp_path):
    video = tmp_path / "silent-film.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "2", str(video))

    with pytest.raises(EmptyAudio, match="no audio stream"):
        decode_audio(video)


def test_audio_longer_than_the_limit_is_rejected():
    with pytest.raises(AudioTooLong, match="longer than the limit of 10 s"):
        decode_audio(AUDIO_DIR / "jfk_inaugural_1961.flac", max_seconds=10)


def test_ffmpeg_is_installed():
    assert shutil.which("ffmpeg"), "make test installs ffmpeg"


# --- ffmpeg reads only the file it is given ---------------------------------------------------


def _playlist(*segments: str) -> str:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:10"]
    for segment in segments:
        lines += ["#EXTINF:2,", segment]
    return "\n".join([*lines, "#EXT-X-ENDLIST", ""])


@pytest.fixture
def segment(tmp_path):
    """A real 2 s MPEG-TS segment beside the inputs (what a playlist may name)."""
    path = tmp_path / "seg.ts"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(AUDIO_DIR / "ljspeech_LJ050-0131.wav"), "-t", "2",
         "-c:a", "mp2", "-f", "mpegts", "-y", str(path)],
        check=True,
    )  # fmt: skip
    shutil.copyfile(AUDIO_DIR / "ljspeech_LJ001-0009.flac", tmp_path / "other.flac")
    return path


def _plain_ffmpeg_decodes(path) -> bool:
    """Whether ffmpeg without our restrictions gets samples out of `path` (so the case is a real one)."""
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", f"file:{path}", "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True,
    )
    return done.returncode == 0 and len(done.stdout) > 16000


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("relative.m3u8", _playlist("seg.ts")),
        ("absolute.m3u8", _playlist("{dir}/seg.ts")),
        ("list.ffconcat", "ffconcat version 1.0\nfile other.flac\n"),
        ("upload.wav", _playlist("seg.ts")),  # a playlist under an audio name
        ("upload.mp3", "ffconcat version 1.0\nfile other.flac\n"),
    ],
    ids=["relative.m3u8", "absolute.m3u8", "list.ffconcat", "playlist.wav", "ffconcat.mp3"],
)
def test_a_file_naming_other_local_files_is_refused_not_followed(tmp_path, segment, name, content):
    path = tmp_path / name
    path.write_text(content.format(dir=tmp_path))
    assert _plain_ffmpeg_decodes(path), "ffmpeg itself would follow it: the case is real"

    with pytest.raises(AudioDecodeError, match="not an audio container the worker reads"):
        decode_audio(path)


def test_a_playlist_naming_a_url_makes_no_request(tmp_path):
    seen: list[str] = []

    class Trap(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        for name in ("remote.m3u8", "remote.wav"):
            (tmp_path / name).write_text(_playlist(f"http://127.0.0.1:{port}/x.ts"))
            with pytest.raises(AudioDecodeError, match="hls file, not an audio container"):
                decode_audio(tmp_path / name)
    finally:
        server.shutdown()
        server.server_close()

    # (ffmpeg 5.1 itself keeps a playlist read from a file to file,crypto,data; older ones fetched.)
    assert seen == []
