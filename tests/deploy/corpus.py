"""A corpus for the image's ffmpeg: one recording in every container the worker reads that the host's ffmpeg
can write, the shared recordings, and files the worker must refuse; decoded by worker.media.audio on the
host and in the image, and compared."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = "jfk_inaugural_1961.flac"
# name -> encoder options for the host's (Debian's, full) ffmpeg: a container of worker.media.audio.DEMUXERS
# each (amr, ape, mpc and xwma have no encoder there).
ENCODED = {
    "a.wav": [],
    "a.w64": [],
    "a.flac": [],
    "a.mp3": [],
    "a.ogg": ["-c:a", "libvorbis"],
    "a.opus": ["-c:a", "libopus"],
    "a.m4a": ["-c:a", "aac"],
    "a.3gp": ["-c:a", "aac", "-ar", "8000"],
    "a.mkv": ["-c:a", "libopus"],
    "a.webm": ["-c:a", "libopus"],
    "a.aac": ["-c:a", "aac"],
    "a.latm": ["-c:a", "aac", "-f", "latm"],
    "a.aiff": [],
    "a.au": [],
    "a.caf": ["-c:a", "alac"],
    "a.wv": [],
    "a.wma": ["-c:a", "wmav2"],
    "a.avi": ["-c:a", "mp3"],
    "a.mpg": ["-c:a", "mp2"],
    "a.ts": ["-c:a", "aac"],
    "a.flv": ["-c:a", "aac"],
    "a.ac3": [],
    "a.eac3": [],
    "a.dts": ["-strict", "-2", "-ar", "48000"],
    "a.thd": ["-strict", "-2", "-ar", "48000", "-f", "truehd"],
    "a.mlp": ["-strict", "-2", "-ar", "48000"],
    "a.tta": [],
    "a.voc": [],
    "a.gsm": ["-ar", "8000", "-c:a", "libgsm"],
}

# Run by the interpreter of each side: every file's sample count, or its error's class.
PROBE = """
import json, sys
from pathlib import Path
from worker.media.audio import decode_audio
out = {}
for path in sorted(Path(sys.argv[1]).iterdir()):
    try:
        out[path.name] = decode_audio(path).size
    except Exception as exc:
        out[path.name] = type(exc).__name__
print(json.dumps(out))
"""


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make(directory: Path, audio_dir: Path) -> None:
    """Fill `directory` (readable by any user: the image runs as one)."""
    source = str(audio_dir / SOURCE)
    for name, options in ENCODED.items():
        _ffmpeg("-i", source, *options, str(directory / name))
    for shared in sorted(audio_dir.iterdir()):
        if shared.suffix in {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".webm"}:
            shutil.copyfile(shared, directory / shared.name)
    video = ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=5"]
    _ffmpeg(*video, "-i", source, "-shortest", "-c:a", "aac", str(directory / "talk.mp4"))  # decodes: its audio
    _ffmpeg(*video, "-t", "2", str(directory / "silent-film.mp4"))  # EmptyAudio
    refused = {
        "list.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:11\n#EXTINF:11,\n{source}\n#EXT-X-ENDLIST\n",
        "list.ffconcat": f"ffconcat version 1.0\nfile '{source}'\n",
        "notes.mp3": "not audio at all",
    }
    for name, text in refused.items():
        (directory / name).write_text(text)
    (directory / "cut.m4a").write_bytes((directory / "a.m4a").read_bytes()[:30_000])
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def decoded_on_host(directory: Path) -> dict[str, int | str]:
    return json.loads(subprocess.run([sys.executable, "-c", PROBE, str(directory)], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
