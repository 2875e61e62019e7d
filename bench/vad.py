"""`--vad`: speech detection (issue 18): the words the pipeline writes on non-speech, and its cost.

Inputs, built in the parent (each row's process gets one as float32 samples):
- speech: the files of ../shared/audio that count for WER joined with 0.5 s of silence (the
  recording of --levers at its natural length, not repeated);
- gaps: the same files with non-speech before, between and after them, as long in all as the
  speech (so about half the recording), the sounds of MIX in turn (worker/devtools/nonspeech.py);
- nonspeech: only the sounds of MIX, 30-45 s each.

Rows, per model:
- the pipeline, as Settings overrides (label, model suffix, overrides) like --levers' rows: energy
  chunking (today), Silero VAD chunking, the hallucination guard, both. A setting this checkout's
  Settings lacks is allowed only at the value that means what the code does without it (TODAY);
  a row that needs any other is skipped, with a printed note, until issue 18's fields exist;
- faster-whisper int8, sequential: the whole file in 30 s windows, no VAD (--levers' fw-int8);
- faster-whisper's BatchedInferencePipeline int8 at its defaults: 8 windows at once over the
  speech its Silero VAD finds, no timestamp tokens.
Greedy decoding everywhere; the pipeline at its defaults (2 calls x 1 thread on 2 CPUs),
faster-whisper with cpu_threads = CPUs. The rows alternate, each run in its own process.

Columns: wall (the minimum of the runs); "x fw batched" / "x fw seq": their wall over the row's
on the same input; WER against the speech's transcripts; inserted words: those the WER's
alignment finds nobody said (all of them on `nonspeech`); words on non-speech: on `gaps`, the
inserted words placed inside a gap, at least TOLERANCE s from its edges (a word placed in a gap
that the alignment matches to the speech is real speech timed into the noise, not counted), on
`nonspeech` every word; peak RSS (VmHWM of the timed work, the lower run's).

Word times (on `gaps` and `nonspeech` only; the timed work is each row's own, see _faster_whisper):
the pipeline's word timestamps (whisper.cpp's token timestamps: no extra pass, the same text);
faster-whisper batched: a second, untimed pass with word timestamps; sequential: its segments'
times, the words spread over them by length.
"""

import importlib.util
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.common import AUDIO_DIR, GAP_SECONDS, Recording, RowResult, proc_status_mb, timed
from bench.levers import alternate, fw_transcribe, load_faster_whisper, pipeline_row, summarize, timed_words
from worker.config import Settings
from worker.devtools.accuracy import insertions, normalize
from worker.devtools.nonspeech import Gap, PlacedWord, Sound, assemble, place, spread, words_in_gaps
from worker.engine.catalog import DEFAULT_VARIANTS
from worker.media.audio import SAMPLE_RATE, decode_audio

INPUTS = ("speech", "gaps", "nonspeech")
WORD_TIMES = ("gaps", "nonspeech")  # the inputs whose rows report word times
TOLERANCE = 0.5  # seconds from a gap's edges within which a word may be the speech's, timed loosely
# (kind, RMS dBFS) of the non-speech, in the order both inputs use them: levels of speech, one quieter.
MIX = (
    ("pink", -30.0),
    ("brown", -25.0),
    ("sines", -30.0),
    ("beep", -30.0),
    ("clicks", -35.0),
    ("silence", -30.0),
    ("pink", -45.0),
)
NONSPEECH_SECONDS = (45.0, 45.0, 40.0, 40.0, 40.0, 30.0, 40.0)
GAP_SEED, NONSPEECH_SEED = 100, 200  # seeds of the first sound of each input; +1 for each next one

# What the code does without each setting of issue 18: a row may name these before they exist.
TODAY: dict[str, Any] = {"chunking": "energy", "hallucination_guard": False}
# row -> (label, model suffix pinned, Settings overrides); every other setting at its default.
PIPELINE_ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "energy": ("pipeline, energy chunking (today)", "", {"chunking": "energy", "hallucination_guard": False}),
    "vad": ("pipeline, Silero VAD chunking", "", {"chunking": "vad", "hallucination_guard": False}),
    "guard": ("pipeline, energy chunking + guard", "", {"chunking": "energy", "hallucination_guard": True}),
    "vad+guard": ("pipeline, VAD chunking + guard", "", {"chunking": "vad", "hallucination_guard": True}),
}
OTHER_ROWS = {
    "fw-seq": "faster-whisper int8, sequential, no VAD",
    "fw-batched": "faster-whisper int8, batched x8, its VAD",
}


@dataclass(frozen=True)
class Input:
    """One input of the benchmark: its samples, what is said in it (None: nothing), its non-speech."""

    name: str
    samples: np.ndarray
    reference: str | None
    gaps: tuple[Gap, ...]

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE

    def describe(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "non_speech_seconds": round(sum(g.end - g.start for g in self.gaps), 1),
            "reference_words": len(normalize(self.reference).split()) if self.reference is not None else 0,
            "gaps": [{"start": round(g.start, 2), "end": round(g.end, 2), "sound": g.sound.name} for g in self.gaps],
        }


class _Timed(NamedTuple):
    start: float
    end: float
    text: str


def build_inputs(speech: Recording, names: Sequence[str] = INPUTS) -> dict[str, Input]:
    """The inputs `names` asks for, from the speech recording (one pass over its files)."""
    if speech.repeats != 1:
        raise ValueError("the speech recording must be one pass over its files")
    if unknown := set(names) - set(INPUTS):
        raise ValueError(f"unknown input(s) {', '.join(sorted(unknown))}; choose from {', '.join(INPUTS)}")
    built = {
        "speech": lambda: Input("speech", speech.samples, speech.reference, ()),
        "gaps": lambda: _with_gaps(speech),
        "nonspeech": _nonspeech,
    }
    return {name: built[name]() for name in INPUTS if name in names}


def _with_gaps(speech: Recording) -> Input:
    files = [decode_audio(AUDIO_DIR / name) for name in speech.files]
    seconds = round(sum(f.size for f in files) / SAMPLE_RATE / (len(files) + 1), 1)
    sounds = [
        Sound(kind, seconds, dbfs, seed=GAP_SEED + i) for i, (kind, dbfs) in zip(range(len(files) + 1), cycle(MIX))
    ]
    pieces = [sounds[0], *(piece for f, s in zip(files, sounds[1:], strict=True) for piece in (f, s))]
    samples, gaps = assemble(pieces, SAMPLE_RATE)
    return Input("gaps", samples, speech.reference, gaps)


def _nonspeech() -> Input:
    sounds = [
        Sound(kind, seconds, dbfs, seed=NONSPEECH_SEED + i)
        for i, ((kind, dbfs), seconds) in enumerate(zip(MIX, NONSPEECH_SECONDS, strict=True))
    ]
    samples, gaps = assemble(sounds, SAMPLE_RATE)
    return Input("nonspeech", samples, None, gaps)


# --- rows --------------------------------------------------------------------------------------


def parts(key: str) -> tuple[str, str, str]:
    """A row key `V:<model>:<input>:<row>` as (model, input, row)."""
    _, model, name, row = key.split(":")
    return model, name, row


def label(row: str) -> str:
    return PIPELINE_ROWS[row][0] if row in PIPELINE_ROWS else OTHER_ROWS[row]


def pending(row: str) -> str | None:
    """Why a row cannot run in this checkout, or None."""
    if row in PIPELINE_ROWS:
        fields = Settings.model_fields
        missing = [f for f, v in PIPELINE_ROWS[row][2].items() if f not in fields and (f not in TODAY or TODAY[f] != v)]
        return f"pending: Settings has no {', '.join(missing)}" if missing else None
    if importlib.util.find_spec("faster_whisper") is None:
        return "not installed (pip install -e '.[bench]')"
    return None


def child_row(key: str, samples: np.ndarray) -> dict[str, Any]:
    """Inside the row's process: the row on the input's samples, with word times on WORD_TIMES inputs."""
    model, name, row = parts(key)
    words = name in WORD_TIMES
    if row in PIPELINE_ROWS:
        _, pin, overrides = PIPELINE_ROWS[row]
        # Settings ignores unknown names: pass only the fields it has (the others are TODAY's values).
        settable = {field: value for field, value in overrides.items() if field in Settings.model_fields}
        result = pipeline_row(samples, model, pin, settable, words=words)
        if words:
            result["details"]["word_times"] = "token timestamps"
        return result
    return _faster_whisper(samples, model, batched=row == "fw-batched", words=words)


def _faster_whisper(samples: np.ndarray, model: str, *, batched: bool, words: bool) -> dict[str, Any]:
    """The timed run at faster-whisper's settings (no word timestamps); word times, if asked for, after it.

    Batched segments have no timestamps (its default): its words come from a second, untimed pass
    with word timestamps (the same decoding plus an alignment pass; checked to give the same text).
    Sequential decoding with word timestamps would decode differently (it seeks to the last word's
    end), so its words are spread over their segments (nonspeech.spread).
    """
    with tempfile.TemporaryDirectory(prefix="fw-model-") as scratch:
        whisper, load = load_faster_whisper(model, "int8", Path(scratch))
        (segments, info), wall, cpu = timed(lambda: fw_transcribe(whisper, samples, model, batched=batched))
        peak_rss_mb = proc_status_mb("self", "VmHWM")
        text = _text(segments)
        details: dict[str, Any] = {"language": info.language}
        if batched:
            details["seconds_after_vad"] = round(info.duration_after_vad, 1)
        word_list: list[tuple[float, float, str]] = []
        if words and batched:
            again, _ = fw_transcribe(whisper, samples, model, batched=True, words=True)
            word_list = timed_words(again)
            details |= {"word_times": "word_timestamps pass, untimed", "word_pass_same_text": _text(again) == text}
        elif words:
            word_list = [(w.start, w.end, w.text) for w in spread(segments)]
            details["word_times"] = "segments, spread by length"
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "text": text,
        "words": word_list,
        "peak_rss_mb": peak_rss_mb,
        "details": details,
    }


def _text(segments: list[Any]) -> str:
    return " ".join(t for s in segments if (t := s.text.strip()))


# --- the parent --------------------------------------------------------------------------------


def run_vad(
    models: list[str],
    runs: int,
    inputs: dict[str, Input],
    run_row: Callable[[str], RowResult],
    only: list[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every row that can run on every input, per model, alternating; the others reported as pending."""
    if unknown := set(only or ()) - {*PIPELINE_ROWS, *OTHER_ROWS}:
        raise SystemExit(f"--vad-rows: unknown row(s) {', '.join(sorted(unknown))}")
    rows = [row for row in (*PIPELINE_ROWS, *OTHER_ROWS) if not only or row in only]
    skipped = {row: why for row in rows if (why := pending(row)) is not None}
    for row, why in skipped.items():
        print(f"--vad: row {row!r} ({label(row)}) skipped: {why}", file=sys.stderr, flush=True)
    tables = {}
    for model in models:
        keys = [f"V:{model}:{name}:{row}" for name in inputs for row in rows]
        results = alternate([k for k in keys if parts(k)[2] not in skipped], runs, run_row)
        tables[model] = [
            _summary(key, results.get(key) or [RowResult(key, status=skipped[parts(key)[2]])], inputs[parts(key)[1]])
            for key in keys
        ]
    return tables


def _summary(key: str, runs: list[RowResult], item: Input) -> dict[str, Any]:
    _, name, row = parts(key)
    summary = {"input": name, "row": row, **summarize(key, label(row), runs, item.reference)}
    if summary["status"] != "ok":
        return summary
    first = next(r for r in runs if r.wall is not None)
    summary["languages"] = [r.details.get("language") for r in runs if r.wall is not None]  # detected, per run
    said = normalize(first.text).split()
    summary["words"] = len(said)
    summary["inserted_words"] = sum(insertions(item.reference, said)) if item.reference is not None else len(said)
    summary["non_speech_words"] = None
    by_gap: dict[Gap, list[PlacedWord]] = {}
    if name in WORD_TIMES:
        placed = place([_Timed(*w) for w in first.words], item.reference)
        summary["word_times_match_text"] = [w.text for w in placed] == said
    if name == "gaps":
        by_gap = words_in_gaps(placed, item.gaps, tolerance=TOLERANCE)
        summary["timed_in_gaps"] = sum(len(found) for found in by_gap.values())
        by_gap = {gap: [w for w in found if w.inserted] for gap, found in by_gap.items()}
        summary["non_speech_words"] = sum(len(found) for found in by_gap.values())
    elif name == "nonspeech":  # every word; the gaps (no tolerance: they are all of it) tell on what
        by_gap = words_in_gaps(placed, item.gaps, tolerance=0.0)
        summary["non_speech_words"] = len(said)
    by_kind: dict[str, list[str]] = {}
    for gap, found in by_gap.items():
        by_kind.setdefault(gap.sound.name, []).extend(w.text for w in found)
    ranked = sorted(((kind, w) for kind, w in by_kind.items() if w), key=lambda kind_words: -len(kind_words[1]))
    summary["non_speech_by_kind"] = {kind: len(w) for kind, w in ranked}
    summary["non_speech_sample"] = {kind: " ".join(w[:12]) for kind, w in ranked}
    return summary


def vad_markdown(tables: dict[str, list[dict[str, Any]]], runs: int, inputs: dict[str, dict[str, Any]]) -> str:
    """The tables, after what the inputs were (`Input.describe()` of each: the JSON report has them)."""
    lines = input_lines(inputs)
    for model, rows in tables.items():
        walls = {(r["input"], r["row"]): r.get("wall_seconds") for r in rows}
        lines += [
            f"Model {model} (pipeline variant {DEFAULT_VARIANTS.get(model, model)}); min of {runs} runs, alternating:",
            "",
            "| input | row | wall s (min) | x fw batched | x fw seq | WER | inserted words | words on non-speech "
            "| peak RSS MB | notes |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['input']} | {r['label']} | - | - | - | - | - | - | - | {r['status']} |")
                continue
            wall = r["wall_seconds"]
            ratios = [
                f"{reference / wall:.2f}x" if (reference := walls.get((r["input"], other))) else "-"
                for other in ("fw-batched", "fw-seq")
            ]
            wer = "-" if r["wer"] is None else f"{r['wer']:.1%}"
            words = "-" if r["non_speech_words"] is None else str(r["non_speech_words"])
            lines.append(
                f"| {r['input']} | {r['label']} | {wall:.1f} | {ratios[0]} | {ratios[1]} | {wer} | "
                f"{r['inserted_words']} | {words} | {r['peak_rss_mb']:.0f} | {_notes(r)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _notes(r: dict[str, Any]) -> str:
    d = r["details"]
    notes = [f"{k} {d[k]}" for k in ("chunks", "calls_x_threads") if k in d]
    if (languages := sorted({lang for lang in r.get("languages", ()) if lang})) != ["en"]:
        notes.append(f"language {'/'.join(languages) or '?'}")
    if "seconds_after_vad" in d:
        notes.append(f"{d['seconds_after_vad']:g} s after VAD")
    if "timed_in_gaps" in r:
        notes.append(f"{r['timed_in_gaps']} words timed in gaps")
    if r["non_speech_by_kind"]:
        notes.append("on " + ", ".join(f"{kind} {n}" for kind, n in r["non_speech_by_kind"].items()))
    notes.append(f"{r['words']} words; runs {', '.join(f'{w:.1f}' for w in r['walls'])}")
    if any(others := [c for c in r["others_cpu_seconds"] if c is not None]):
        notes.append(f"others' CPU {', '.join(f'{c:.0f}' for c in others)} s")
    if not r["same_text_every_run"]:
        notes.append("text varied")
    if d.get("word_pass_same_text") is False or r.get("word_times_match_text") is False:
        notes.append("word times' text differs")
    return "; ".join(notes)


def input_lines(inputs: dict[str, dict[str, Any]]) -> list[str]:
    """What the inputs were (from their `Input.describe()`)."""
    lines = []
    for name, d in inputs.items():
        what = {
            "speech": f"the speech files joined with {GAP_SECONDS:g} s of silence",
            "gaps": f"the same files with {len(d['gaps'])} gaps of non-speech before, between and after them",
            "nonspeech": f"{len(d['gaps'])} sounds, no speech",
        }[name]
        lines.append(
            f"- {name}: {what}; {d['seconds']:.1f} s, {d['non_speech_seconds']:.1f} s of it non-speech, "
            f"{d['reference_words']} reference words."
        )
        if d["gaps"]:
            sounds = ", ".join(f"{g['sound']} {g['end'] - g['start']:.1f} s" for g in d["gaps"])
            lines.append(f"  Non-speech in order: {sounds}.")
    return [*lines, ""]
