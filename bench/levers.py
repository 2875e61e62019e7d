"""`--levers`: whisper.cpp's levers, each on or off against the defaults, beside faster-whisper.

For every model (tiny.en, base) each row runs in its own process (its peak RSS is its own), the
rows alternate, every row runs `--runs` times and the table keeps the minimum wall time. WER is
the first run's (greedy decoding gives the same text every run). Throughput is given as
"x fw int8": faster-whisper int8's wall time over the row's, on the same recording and the same
weights (the CTranslate2 copy the packages ship, which our converter turns into ggml).
"""

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import MODELS_DIR, Recording, RowResult, timed
from worker import wiring
from worker.config import Settings
from worker.devtools.accuracy import wer
from worker.engine.catalog import DEFAULT_VARIANTS, PACKAGED_MODELS, resolve_model

_DEFAULTS = Settings.model_fields
_CHUNK = _DEFAULTS["chunk_max_seconds"].default
_OTHER_CHUNK = 29.0 if _CHUNK != 29.0 else 24.0
BATCH_SIZE = 8  # faster-whisper's BatchedInferencePipeline default


def _toggled(field: str, what: str) -> tuple[str, str, dict[str, Any]]:
    """A row with one boolean setting the other way round from its default."""
    value = not _DEFAULTS[field].default
    return (f"{what}: {'on' if value else 'off'}", "", {field: value})


# row -> (label, model suffix pinned, Settings overrides); every other setting at its default.
PIPELINE_ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "default": ("pipeline, defaults", "", {}),
    "f16": ("quantization: f16", "-f16", {}),
    "q8_0": ("quantization: q8_0", "-q8_0", {}),
    "q4_0": ("quantization: q4_0", "-q4_0", {}),
    "fit": _toggled("whisper_fit_audio_ctx", "encoder context fitted to the chunk"),
    "fallback": _toggled("whisper_temperature_fallback", "temperature fallback"),
    "longest-first": _toggled("longest_chunks_first", "longest chunks first"),
    "no-timestamps": _toggled("whisper_no_timestamps", "no timestamp tokens"),
    "guard": _toggled("hallucination_guard", "hallucination guard"),
    "chunk": (f"chunks <= {_OTHER_CHUNK:g} s", "", {"chunk_max_seconds": _OTHER_CHUNK}),
    "1x2": ("1 call x 2 threads (sequential)", "", {"use_parallel_transcription": False}),
    "before": (
        "before this issue: f16, 30 s context, fallback, chunks <= 29 s",
        "-f16",
        {
            "whisper_fit_audio_ctx": False,
            "whisper_temperature_fallback": True,
            "chunk_max_seconds": 29.0,
            "longest_chunks_first": False,
        },
    ),
}
OTHER_ROWS = {
    "raw": "whisper.cpp f16, whole file, one call",
    "fw-int8": "faster-whisper int8, whole file",
    "fw-float32": "faster-whisper float32, whole file",
}


def lever_keys(model: str, only: list[str] | None = None) -> list[str]:
    return [f"L:{model}:{row}" for row in (*PIPELINE_ROWS, *OTHER_ROWS) if not only or row in only]


def label(key: str) -> str:
    row = key.split(":")[2]
    return PIPELINE_ROWS[row][0] if row in PIPELINE_ROWS else OTHER_ROWS[row]


# --- inside the row's process ----------------------------------------------------------------


def child_row(key: str, samples: np.ndarray) -> dict[str, Any]:
    _, model, row = key.split(":")
    if row in PIPELINE_ROWS:
        return pipeline_row(samples, model, *PIPELINE_ROWS[row][1:])
    if row == "raw":
        return _raw(samples, model)
    return faster_whisper_row(samples, model, row.removeprefix("fw-"))


def timed_words(segments: Iterable[Any]) -> list[tuple[float, float, str]]:
    """(start, end, text) of every word of the segments (pywhispercpp's and faster-whisper's alike)."""
    return [(round(w.start, 3), round(w.end, 3), w.word) for s in segments for w in s.words or ()]


def pipeline_row(
    samples: np.ndarray, model: str, pin: str, overrides: dict[str, Any], *, words: bool = False
) -> dict[str, Any]:
    """The pipeline with the defaults but `overrides` (Settings fields), on the model's variant `pin`;
    with `words`, word timestamps too (whisper.cpp's token timestamps: no extra pass)."""
    started = time.perf_counter()
    settings = Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="", **overrides)
    processor = wiring.processor(settings, model + pin, wiring.pipeline_options(settings))
    load = time.perf_counter() - started
    transcript, wall, cpu = timed(lambda: processor.process_samples(samples, word_timestamps=words))
    d = processor.transcriber.decoding
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "text": transcript.text,
        "words": timed_words(transcript.segments),
        "details": {
            "variant": processor.model_name,
            "language": transcript.language,
            "chunks": transcript.chunks,
            "calls_x_threads": f"{processor.options.concurrent_calls}x{processor.threads_for(transcript.chunks)}",
            "fit_audio_ctx": d.fit_audio_ctx,
            "fallback": d.temperature_fallback,
        },
    }


def _raw(samples: np.ndarray, model: str) -> dict[str, Any]:
    """pywhispercpp as a user would call it, on the unquantized file: one call, every thread."""
    from pywhispercpp.model import Model

    settings = Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="")
    path = wiring.model_downloader(settings).ensure_model_exists(resolve_model(model + "-f16"))
    started = time.perf_counter()
    whisper = Model(str(path), n_threads=os.cpu_count(), print_progress=False, redirect_whispercpp_logs_to=None)
    load = time.perf_counter() - started
    segments, wall, cpu = timed(lambda: whisper.transcribe(samples))
    text = " ".join(s.text.strip() for s in segments if s.text.strip())
    return {"wall": wall, "cpu": cpu, "load": load, "text": text, "details": {"variant": path.name}}


def faster_whisper_row(samples: np.ndarray, model: str, compute_type: str) -> dict[str, Any]:
    """faster-whisper, greedy, on the CTranslate2 copy that our converter reads for this model."""
    with tempfile.TemporaryDirectory(prefix="fw-model-") as scratch:
        whisper, load = load_faster_whisper(model, compute_type, Path(scratch))
        (segments, _info), wall, cpu = timed(lambda: fw_transcribe(whisper, samples, model))
    text = " ".join(t for s in segments if (t := s.text.strip()))
    return {"wall": wall, "cpu": cpu, "load": load, "text": text, "details": {}}


def load_faster_whisper(model: str, compute_type: str, scratch: Path) -> tuple[Any, float]:
    """faster-whisper's WhisperModel on the packaged CTranslate2 copy (cpu_threads = CPUs), and its load time."""
    from faster_whisper import WhisperModel

    directory = _ct2_directory(model, scratch)
    started = time.perf_counter()
    whisper = WhisperModel(str(directory), device="cpu", compute_type=compute_type, cpu_threads=os.cpu_count())
    return whisper, time.perf_counter() - started


def fw_transcribe(
    whisper: Any, samples: np.ndarray, model: str, *, batched: bool = False, words: bool = False
) -> tuple[list[Any], Any]:
    """Every segment (and the info) of greedy decoding: the whole file in 30 s windows one after
    another, no VAD, no conditioning on the previous window; or `batched`: BatchedInferencePipeline at
    its defaults (its Silero VAD, no timestamp tokens), BATCH_SIZE windows at once. `words`: word
    timestamps (an alignment pass per window; sequential decoding then also seeks by the last word)."""
    from faster_whisper import BatchedInferencePipeline

    language = "en" if model.endswith(".en") else None
    if batched:
        segments, info = BatchedInferencePipeline(whisper).transcribe(
            samples, beam_size=1, language=language, batch_size=BATCH_SIZE, word_timestamps=words
        )
    else:
        segments, info = whisper.transcribe(
            samples,
            beam_size=1,
            language=language,
            vad_filter=False,
            condition_on_previous_text=False,
            word_timestamps=words,
        )
    return list(segments), info  # the segments are a generator: decoding happens here


def _ct2_directory(model: str, scratch: Path) -> Path:
    """The packaged CTranslate2 model as one directory (base is split over two packages)."""
    source = PACKAGED_MODELS[model].locate()
    if source is None:
        raise RuntimeError(f"no installed package carries {model}")
    directory = source.model_parts[0].parent
    if len(source.model_parts) == 1:
        return directory
    with open(scratch / "model.bin", "wb") as out:
        for part in source.model_parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    for part_dir in {p.parent for p in source.model_parts}:
        for extra in part_dir.iterdir():
            if not extra.name.startswith("model.bin"):
                shutil.copy(extra, scratch / extra.name)
    return scratch


# --- the parent: alternate, keep the minimum, print the table -----------------------------------


def alternate(keys: list[str], runs: int, run_row: Callable[[str], RowResult]) -> dict[str, list[RowResult]]:
    """Every row `runs` times, alternating (the order reversed on every other run)."""
    results: dict[str, list[RowResult]] = {k: [] for k in keys}
    for run in range(runs):
        for key in keys if run % 2 == 0 else keys[::-1]:
            print(f"run {run + 1}/{runs}: {key} ...", flush=True, file=sys.stderr)
            results[key].append(run_row(key))
    return results


def run_levers(
    models: list[str], runs: int, recording: Recording, run_row: Callable[[str], RowResult], only: list[str] | None
) -> dict[str, list[dict[str, Any]]]:
    """Every row of every model, alternating (`alternate`), each summarized against the recording."""
    tables = {}
    for model in models:
        keys = lever_keys(model, only)
        results = alternate(keys, runs, run_row)
        tables[model] = [summarize(key, label(key), results[key], recording.reference) for key in keys]
    return tables


def summarize(key: str, row_label: str, runs: list[RowResult], reference: str | None) -> dict[str, Any]:
    """A row's runs as one: the minimum wall, the first run's text scored against `reference` (if any)."""
    ok = [r for r in runs if r.wall is not None]
    if not ok:
        return {"key": key, "label": row_label, "status": runs[0].status}
    return {
        "key": key,
        "label": row_label,
        "status": "ok",
        "walls": [round(r.wall, 2) for r in ok],
        "others_cpu_seconds": [r.details.get("others_cpu_seconds") for r in ok],  # per run, as the walls
        "wall_seconds": min(r.wall for r in ok),
        # The lowest: a first run that had to convert the model first peaks with the conversion.
        "peak_rss_mb": min(r.peak_rss_mb or 0 for r in ok),
        "wer": round(wer([reference], [ok[0].text]), 4) if reference is not None else None,
        "same_text_every_run": len({r.text for r in ok}) == 1,
        "details": ok[0].details,
    }


def levers_markdown(tables: dict[str, list[dict[str, Any]]], runs: int) -> str:
    lines = []
    for model, rows in tables.items():
        by_row = {r["key"].split(":")[2]: r for r in rows}
        fw = by_row.get("fw-int8", {}).get("wall_seconds")
        before = by_row.get("before", {}).get("wall_seconds")
        lines += [
            f"Model {model} (default variant {DEFAULT_VARIANTS.get(model, model)}); min of {runs} runs, alternating:",
            "",
            "| row | wall s (min) | x fw int8 | x before | WER | peak RSS MB | notes |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['label']} | - | - | - | - | - | {r['status']} |")
                continue
            wall = r["wall_seconds"]
            notes = ", ".join(
                f"{k} {v}" for k, v in r["details"].items() if k in ("variant", "chunks", "calls_x_threads")
            )
            notes += f"; runs {', '.join(f'{w:.1f}' for w in r['walls'])}" + (
                "" if r["same_text_every_run"] else "; text varied"
            )
            ratio_fw = f"{fw / wall:.2f}x" if fw else "-"
            ratio_before = f"{before / wall:.2f}x" if before else "-"
            lines.append(
                f"| {r['label']} | {wall:.1f} | {ratio_fw} | {ratio_before} | {r['wer']:.1%} | "
                f"{r['peak_rss_mb']:.0f} | {notes} |"
            )
        lines.append("")
    return "\n".join(lines)
