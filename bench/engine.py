"""`--engine`: the batched engine (issue 25) against faster-whisper, and a profile of where the time goes.

Inputs (bench_vad.build_inputs): speech (the files of ../shared/audio that count for WER, joined with
0.5 s of silence) and gaps (the same with non-speech between them); `--engine-inputs` picks.

Rows, per model, each a whole process, alternating, the minimum of `--runs`:
- the pipeline at its defaults (the batched engine), and with one lever changed: calls one by one
  (WHISPER_BATCH_SIZE=1, whisper_full per chunk as before), another quantization, other batch sizes,
  longer windows, a smaller context margin;
- faster-whisper int8 (cpu_threads = CPUs, its own OpenMP settings): sequential (30 s windows, no VAD,
  greedy), BatchedInferencePipeline x8 with its VAD (greedy), and the same at its defaults (beam 5).

The profile (pipeline rows): the job's phases (speech detection and chunking, transcription, assembly)
and, inside transcription, the engine thread's time (worker.engine.passes.EngineStats): the log-mel,
the encoder (per 20 ms position), the decoder (passes, per token), the rules in numpy, the whisper calls
the batch cannot take (the guard's retries); what is left of the transcription's wall time is the chunk
threads' Python and the engine waiting. The row of calls one by one reads whisper.cpp's own counters off
each state (encoder passes, encode and decode times; `_StateCounters`).

`--fw-isa AVX2` (CTranslate2's CT2_FORCE_CPU_ISA) and `--engine-python` (a virtual environment whose
libwhisper was built for AVX2 only) measure both engines on the AVX2 instruction set of an AVX-512 CPU.
"""

import ctypes
import tempfile
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from bench.common import AUDIO_DIR, MODELS_DIR, ROOT, RowResult, proc_status_mb, timed
from bench.levers import alternate, load_faster_whisper, summarize
from bench.vad import Input
from worker import wiring
from worker.config import Settings
from worker.devtools import conversations, heldout
from worker.devtools.accuracy import normalize
from worker.engine import libwhisper
from worker.engine.catalog import DEFAULT_VARIANTS
from worker.media.audio import InMemoryAudio

# row -> (label, model suffix pinned, Settings overrides)
PIPELINE_ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "batched": ("pipeline, batched engine (defaults)", "", {}),
    "calls": ("pipeline, calls one by one (WHISPER_BATCH_SIZE=1)", "", {"whisper_batch_size": 1}),
    "q4_0": ("batched, q4_0", "-q4_0", {}),
    "q5_0": ("batched, q5_0", "-q5_0", {}),
    "q8_0": ("batched, q8_0", "-q8_0", {}),
    "f16": ("batched, f16", "-f16", {}),
    "batch4": ("batched x4", "", {"whisper_batch_size": 4}),
    "batch16": ("batched x16", "", {"whisper_batch_size": 16}),
    "chunk28": ("batched, chunks <= 28 s", "", {"chunk_max_seconds": 28.0}),
    "margin16": ("batched, context margin 16 (0.32 s)", "", {"whisper_audio_ctx_margin": 16}),
    "unlevelled": ("batched, quiet stretches not raised (VAD_LEVEL_QUIET=false)", "", {"vad_level_quiet": False}),
}
# row -> (label, batched, beam size)
FW_ROWS: dict[str, tuple[str, bool, int]] = {
    "fw-seq": ("faster-whisper int8, sequential, no VAD", False, 1),
    "fw-batched": ("faster-whisper int8, batched x8, its VAD", True, 1),
    "fw-beam5": ("faster-whisper int8, batched x8, its defaults (beam 5)", True, 5),
}
DEFAULT_ROWS = ("batched", "calls", "fw-seq", "fw-batched", "fw-beam5")
# Set by main from --fw-isa / --engine-python.
FW_ENVIRONMENT: dict[str, str] = {}
ENGINE_PYTHON: str | None = None


def keys(models: list[str], inputs: list[str], rows: list[str]) -> list[str]:
    unknown = set(rows) - {*PIPELINE_ROWS, *FW_ROWS}
    if unknown:
        raise SystemExit(f"--engine-rows: unknown row(s) {', '.join(sorted(unknown))}")
    return [f"E:{model}:{name}:{row}" for model in models for name in inputs for row in rows]


def parts(key: str) -> tuple[str, str, str]:
    _, model, name, row = key.split(":")
    return model, name, row


def is_faster_whisper(key: str) -> bool:
    return any(key.endswith(f":{row}") for row in FW_ROWS) or key.startswith("fw-")


def interpreter(key: str) -> str | None:
    """The Python a row runs in: --engine-python for the pipeline's rows, else this one."""
    return ENGINE_PYTHON if key.startswith("E:") and not is_faster_whisper(key) else None


def label(row: str) -> str:
    return PIPELINE_ROWS[row][0] if row in PIPELINE_ROWS else FW_ROWS[row][0]


# --- inside the row's process ----------------------------------------------------------------


def child_row(key: str, samples: np.ndarray) -> dict[str, Any]:
    model, _, row = parts(key)
    if row in FW_ROWS:
        return _faster_whisper(samples, model, *FW_ROWS[row][1:])
    _, pin, overrides = PIPELINE_ROWS[row]
    return _pipeline(samples, model + pin, overrides, counters=row == "calls")


def _pipeline(samples: np.ndarray, model: str, overrides: dict[str, Any], *, counters: bool) -> dict[str, Any]:
    """The pipeline's phases timed one by one (as process_samples runs them), with the engine's profile."""
    settings = Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="", **overrides)
    started = time.perf_counter()
    processor = wiring.processor(settings, model, wiring.pipeline_options(settings))
    load = time.perf_counter() - started
    state_counters = _StateCounters() if counters else None
    phases: dict[str, float] = {}

    engine: dict[str, Any] = {}

    def run() -> Any:
        with tempfile.TemporaryDirectory(prefix="bench-job-") as work:
            t0 = time.perf_counter()
            prepared = processor.prepare_audio(InMemoryAudio(samples))  # speech detection, language
            t1 = time.perf_counter()
            before = processor.transcriber.engine_stats()
            per_chunk = processor.transcribe_chunks(prepared, "transcribe", None, Path(work))
            after = processor.transcriber.engine_stats()
            t2 = time.perf_counter()
            transcript = processor.assemble(prepared, per_chunk)
            phases.update(speech_detection=t1 - t0, transcription=t2 - t1, assembly=time.perf_counter() - t2)
            if before is not None and after is not None:  # the transcription's share of the engine's time
                engine.update({k: v - getattr(before, k) for k, v in vars(after).items()})
                engine["language_seconds"] = before.call_seconds
            return transcript

    transcript, wall, cpu = timed(run)
    profile: dict[str, Any] = {k: round(v, 3) for k, v in phases.items()}
    if engine:
        profile["engine"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in engine.items()}
    if state_counters is not None:
        profile["calls"] = state_counters.totals()
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "text": transcript.text,
        "details": {"variant": processor.model_name, "chunks": transcript.chunks, "profile": profile},
    }


class _Counters(ctypes.Structure):
    """The leading counters of whisper.cpp 1.8.5's `struct whisper_state` (src/whisper.cpp): timings in µs,
    then call counts. Read-only, for the benchmark; the runtime never reads a state's memory."""

    _fields_ = [(n, ctypes.c_int64) for n in ("sample", "encode", "decode", "batchd", "prompt", "mel")] + [
        (n, ctypes.c_int32) for n in ("n_sample", "n_encode", "n_decode", "n_batchd", "n_prompt")
    ]


class _StateCounters:
    """Wraps libwhisper.transcribe to add up each call's counters (whisper_full's encoder passes and times)."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}
        self._calls = 0
        original = libwhisper.transcribe

        def counted(ctx, state, audio, **kwargs):
            counters = _Counters.from_address(state._handle)
            before = {name: getattr(counters, name) for name, _ in _Counters._fields_}
            result = original(ctx, state, audio, **kwargs)
            for name, _ in _Counters._fields_:
                self._totals[name] = self._totals.get(name, 0) + getattr(counters, name) - before[name]
            self._calls += 1
            return result

        libwhisper.transcribe = counted

    def totals(self) -> dict[str, float]:
        seconds = {f"{k}_seconds": round(v / 1e6, 3) for k, v in self._totals.items() if not k.startswith("n_")}
        counts = {k: int(v) for k, v in self._totals.items() if k.startswith("n_")}
        return {"calls": self._calls, **seconds, **counts}


def _faster_whisper(samples: np.ndarray, model: str, batched: bool, beam_size: int) -> dict[str, Any]:
    from faster_whisper import BatchedInferencePipeline

    language = "en" if model.endswith(".en") else None
    with tempfile.TemporaryDirectory(prefix="fw-model-") as scratch:
        whisper, load = load_faster_whisper(model, "int8", Path(scratch))

        def run() -> list[Any]:
            if batched:
                segments, _ = BatchedInferencePipeline(whisper).transcribe(
                    samples, beam_size=beam_size, language=language, batch_size=8
                )
            else:
                segments, _ = whisper.transcribe(
                    samples, beam_size=beam_size, language=language, vad_filter=False, condition_on_previous_text=False
                )
            return list(segments)  # a generator: decoding happens here

        segments, wall, cpu = timed(run)
    text = " ".join(t for s in segments if (t := s.text.strip()))
    return {"wall": wall, "cpu": cpu, "load": load, "text": text, "peak_rss_mb": proc_status_mb("self", "VmHWM")}


# --- the parent --------------------------------------------------------------------------------

HELDOUT_CACHE = ROOT / ".cache" / "heldout"
QUIET_DB = -28.0  # the right speaker of each call, under the left


def quiet_input() -> tuple[Input, list[int]]:
    """The diarization bench's three stereo calls with the right speaker QUIET_DB under the left, as the mono mix
    a job gets (1 s of silence between calls), and the channel of each reference word (1: the quiet one)."""
    speakers = conversations.load_speakers(AUDIO_DIR)
    gap = np.zeros(16000, dtype=np.float32)
    pieces, words, owners = [], [], []
    for name, who, seconds, seed in conversations.CALLS:
        call = conversations.stereo_call(
            name, *(speakers[s] for s in who), seconds=seconds, seed=seed, right_db=QUIET_DB
        )
        pieces += [call.samples.mean(axis=1).astype(np.float32), gap]
        for turn in sorted(call.turns, key=lambda t: t.start):
            said = normalize(turn.text).split()
            words += said
            owners += [turn.channel] * len(said)
    return Input("quiet", np.concatenate(pieces[:-1]), " ".join(words), ()), owners


def quiet_words_lost(reference: str, owners: list[int], text: str) -> tuple[int, int]:
    """(words of the quiet speaker the transcript leaves out, how many they said)."""
    aligned = jiwer.process_words(reference, normalize(text))
    lost = sum(
        owners[i] == 1
        for chunk in aligned.alignments[0]
        if chunk.type == "delete"
        for i in range(chunk.ref_start_idx, chunk.ref_end_idx)
    )
    return lost, owners.count(1)


def heldout_input() -> tuple[Input, list[heldout.Clip]]:
    """worker.devtools.heldout's clips joined with 0.5 s of silence (fetched into .cache/heldout once)."""
    clips = heldout.clips(HELDOUT_CACHE)
    samples, reference = heldout.recording(clips)
    return Input("heldout", samples, reference, ()), clips


def heldout_lines(item: Input, clips: list[heldout.Clip]) -> list[str]:
    d = item.describe()
    return [
        f"- heldout: {len(clips)} clips of other voices (worker/devtools/heldout.py), joined with 0.5 s of silence; "
        f"{d['seconds']:.1f} s, {d['reference_words']} reference words: {', '.join(c.name for c in clips)}.",
        "",
    ]


def run_engine(
    models: list[str], inputs: dict[str, Any], rows: list[str], runs: int, run_row
) -> dict[str, list[dict[str, Any]]]:
    """Every row on every input, per model, alternating; summarized (bench_levers.summarize)."""
    tables = {}
    for model in models:
        model_keys = keys([model], list(inputs), rows)
        results: dict[str, list[RowResult]] = alternate(model_keys, runs, run_row)
        tables[model] = [_summary(k, results[k], inputs[parts(k)[1]].reference) for k in model_keys]
    return tables


def _summary(key: str, runs: list[RowResult], reference: str | None) -> dict[str, Any]:
    """summarize's row, with the details (the profile) of its fastest run; on `quiet`, the quiet words lost."""
    _, name, row = parts(key)
    summary = {"input": name, "row": row, **summarize(key, label(row), runs, reference)}
    ok = [r for r in runs if r.wall is not None]
    if ok:
        summary["details"] = dict(min(ok, key=lambda r: r.wall).details)
        if name == "quiet" and reference is not None:
            summary["details"]["quiet_words_lost"] = quiet_words_lost(reference, QUIET_OWNERS, ok[0].text)
    return summary


QUIET_OWNERS: list[int] = []  # set with the quiet input (main.engine_main)
QUIET_LINE = (
    f"- quiet: the three stereo calls of --diarize (two readers of ../shared/audio taking turns), the right "
    f"speaker {-QUIET_DB:g} dB under the left, mixed to mono as a job gets them, 1 s apart.\n"
)


def engine_markdown(tables: dict[str, list[dict[str, Any]]], runs: int) -> str:
    lines = []
    for model, rows in tables.items():
        lines += [
            f"Model {model} (default variant {DEFAULT_VARIANTS.get(model, model)}); min of {runs} runs, alternating:",
            "",
            "| input | row | wall s (min) | x fw batched | x fw seq | x fw beam 5 | WER | peak RSS MB | notes |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        walls = {(r["input"], r["row"]): r.get("wall_seconds") for r in rows}
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['input']} | {r['label']} | - | - | - | - | - | - | {r['status']} |")
                continue
            wall = r["wall_seconds"]
            ratios = [_ratio(walls.get((r["input"], fw)), wall) for fw in ("fw-batched", "fw-seq", "fw-beam5")]
            notes = f"runs {', '.join(f'{w:.1f}' for w in r['walls'])}; others' CPU {_others(r)}"
            if "chunks" in r["details"]:
                notes = f"{r['details']['variant']}, {r['details']['chunks']} chunks; " + notes
            if "quiet_words_lost" in r["details"]:
                lost, said = r["details"]["quiet_words_lost"]
                notes = f"quiet speaker's words lost {lost} of {said}; " + notes
            notes += "" if r["same_text_every_run"] else "; text varied"
            lines.append(
                f"| {r['input']} | {r['label']} | {wall:.1f} | {' | '.join(ratios)} | {r['wer']:.1%} | "
                f"{r['peak_rss_mb']:.0f} | {notes} |"
            )
        lines += ["", *profile_lines(rows), ""]
    return "\n".join(lines)


def profile_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Where each pipeline row's time went (its fastest run)."""
    lines = [
        "| input | row | wall s | speech detection (+ language) s | transcription s | mel s | "
        "encoder s (us/position) | decoder s (passes, ms/token) | rules s | whisper_full calls s | "
        "not in the engine s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        profile = r.get("details", {}).get("profile") if r["status"] == "ok" else None
        if not profile:
            continue
        e, c = profile.get("engine"), profile.get("calls")
        if e:
            busy = (
                e["mel_seconds"] + e["encode_seconds"] + e["decode_seconds"] + e["choose_seconds"] + e["call_seconds"]
            )
            cells = [
                f"{e['mel_seconds']:.2f}",
                f"{e['encode_seconds']:.2f} ({1e6 * e['encode_seconds'] / max(1, e['encoded_positions']):.0f})",
                f"{e['decode_seconds']:.2f} ({e['passes']}, {1e3 * e['decode_seconds'] / max(1, e['tokens']):.2f})",
                f"{e['choose_seconds']:.2f}",
                f"{e['call_seconds']:.2f} ({e['calls']})",
                f"{profile['transcription'] - busy:.2f}",
            ]
        elif c:
            cells = [
                f"{c['mel_seconds']:.2f}*",
                f"{c['encode_seconds']:.2f}* ({c['n_encode']} passes, {c['calls']} calls)",
                f"{c['decode_seconds']:.2f}* ({c['n_decode']}, {1e3 * c['decode_seconds'] / max(1, c['n_decode']):.2f})",
                f"{c['sample_seconds']:.2f}*",
                "-",
                "-",
            ]
        else:
            continue
        language = f" ({e['language_seconds']:.2f})" if e and e.get("language_seconds") else ""
        lines.append(
            f"| {r['input']} | {r['label']} | {r['wall_seconds']:.1f} | {profile['speech_detection']:.2f}{language} | "
            f"{profile['transcription']:.2f} | {' | '.join(cells)} |"
        )
    lines.append(
        "\n(*) calls one by one: whisper.cpp's counters summed over the calls, which run two at a time "
        "(thread time, not wall); its rules are whisper.cpp's sampling."
    )
    return lines


def _ratio(reference: float | None, wall: float) -> str:
    return f"{reference / wall:.2f}x" if reference else "-"


def _others(r: dict[str, Any]) -> str:
    return ", ".join(f"{v:.0f}" for v in r["others_cpu_seconds"] if v is not None) + " s"
