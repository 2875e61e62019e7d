"""`--guard`: the hallucination guard's rules, each alone and all together, against the guard off.

Per model and row (Settings overrides, every other setting at its default), in this process:
- WER: the pipeline on every file of ../shared/audio, aggregated over the files that count (as --wer);
- loops: output segments that repeat themselves (`guard.DecodeCheck.loops` on each segment alone),
  over every file;
- retries: whisper calls the guard decoded again (its log line);
- words on non-speech: the pipeline's words on 45 s of synthesized noise, tones and clicks (ffmpeg's
  lavfi sources, decoded by the worker's own decoder); none of them holds a word.
"""

import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from bench.common import AUDIO_DIR, MODELS_DIR, counts_for_wer, manifest_files, reference_of
from worker import wiring
from worker.config import Settings
from worker.devtools.accuracy import wer
from worker.engine.guard import GuardOptions, assess
from worker.engine.transcriber import WhisperTranscriber
from worker.media.audio import decode_audio
from worker.pipeline import Processor

_RETRY_ONLY = {"guard_drop_no_speech": False, "guard_strip_nonspeech": False}
# row -> (label, Settings overrides, GuardOptions overrides, DecodingOptions overrides): the last two are
# levers without a setting, measured here before choosing their defaults.
ROWS: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "off": ("guard off", {"hallucination_guard": False}, {}, {}),
    "retry": ("retry only", _RETRY_ONLY, {}, {}),
    "retry-loops": ("retry only, on loops only", _RETRY_ONLY, {"retry_improbable": False}, {}),
    "retry-greedy": ("retry only, greedy only", _RETRY_ONLY, {"retry_beam_sizes": (1,)}, {}),
    "drop": ("drop no-speech only", {"guard_retry": False, "guard_strip_nonspeech": False}, {}, {}),
    "strip": ("strip annotations only", {"guard_retry": False, "guard_drop_no_speech": False}, {}, {}),
    "on": ("guard on (every rule)", {}, {}, {}),
    "on-loops": ("guard on, retry on loops only", {}, {"retry_improbable": False}, {}),
    "on-nst-off": ("guard on, suppress_nst off", {}, {}, {"suppress_nonspeech": False}),
    "off-nst-off": ("guard off, suppress_nst off", {"hallucination_guard": False}, {}, {"suppress_nonspeech": False}),
}
SECONDS = 45
# ffmpeg lavfi sources: noise as the README's example makes it, three steady tones, a click every 0.25 s.
NOISES = {
    "pink": f"anoisesrc=color=pink:seed=1:d={SECONDS}",
    "brown": f"anoisesrc=color=brown:seed=1:d={SECONDS}",
    "tones": f"sine=f=330:d={SECONDS}[a];sine=f=440:d={SECONDS}[b];sine=f=1250:d={SECONDS}[c];[a][b][c]amix=inputs=3",
    "clicks": f"aevalsrc='if(lt(mod(t,0.25),0.002),0.9,0)':s=16000:d={SECONDS}",
}
RETRY_MESSAGE = "looked like a failure"  # the transcriber's log line for a retried call


def noise_samples(directory: Path) -> dict[str, np.ndarray]:
    """Every NOISES source rendered by ffmpeg to a WAV file in `directory`, then decoded as a job's input."""
    samples = {}
    for name, source in NOISES.items():
        path = directory / f"{name}.wav"
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ar", "16000", "-ac", "1"]
        subprocess.run([*command, str(path)], check=True)
        samples[name] = decode_audio(path)
    return samples


def run_row(model: str, row: str, speech: dict[str, np.ndarray], noises: dict[str, np.ndarray]) -> dict[str, Any]:
    """One model with one row's settings over every speech file and every noise."""
    retries: list[str] = []
    sink = logger.add(retries.append, level="INFO", filter=lambda r: RETRY_MESSAGE in r["message"])
    processor = _processor(model, *ROWS[row][1:])
    started = time.perf_counter()
    transcripts = {name: processor.process_samples(samples) for name, samples in speech.items()}
    wall = time.perf_counter() - started
    words = {name: len(processor.process_samples(samples).text.split()) for name, samples in noises.items()}
    logger.remove(sink)
    counted = [name for name in speech if counts_for_wer(name)]
    eot, rules = processor.transcriber.eot, GuardOptions()
    return {
        "model": processor.model_name,
        "row": row,
        "wer": round(wer([reference_of(n) for n in counted], [transcripts[n].text for n in counted]), 4),
        "loops": {
            n: [s.text for s in t.segments if assess([s], eot, rules).loops(rules)] for n, t in transcripts.items()
        },
        "retries": len(retries),
        "speech_seconds": round(wall, 1),
        "noise_words": words,
    }


def _processor(model: str, overrides: dict[str, Any], guard: dict[str, Any], decoding: dict[str, Any]) -> Processor:
    """wiring.processor's pipeline, with the row's guard and decoding levers on top of its settings."""
    settings = Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="", **overrides)
    name, path = wiring.model_downloader(settings).provide(model)
    options = wiring.pipeline_options(settings)
    transcriber = WhisperTranscriber(
        path,
        max_concurrent_calls=options.concurrent_calls,
        beam_size=settings.whisper_beam_size,
        decoding=dataclasses.replace(wiring.decoding_options(settings), **decoding),
        guard=dataclasses.replace(wiring.guard_options(settings), **guard),
    )
    return Processor(transcriber, model_name=name, options=options)


def run_guard(models: list[str], rows: list[str]) -> list[dict[str, Any]]:
    """Every row for every model; the speech and the noises decoded once."""
    speech = {name: decode_audio(AUDIO_DIR / name) for name in manifest_files()}
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as scratch:
        noises = noise_samples(Path(scratch))
    results = []
    for model in models:
        for row in rows:
            print(f"{model}: {row} ...", file=sys.stderr, flush=True)
            results.append(run_row(model, row, speech, noises))
    return results


def guard_markdown(results: list[dict[str, Any]]) -> str:
    noise_names = " / ".join(NOISES)
    lines = [
        f"| model | row | WER | loops | retries | speech wall s | words on {noise_names} ({SECONDS} s each) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        loops = sum(len(v) for v in r["loops"].values())
        words = " / ".join(str(r["noise_words"][n]) for n in NOISES)
        lines.append(
            f"| {r['model']} | {ROWS[r['row']][0]} | {r['wer']:.2%} | {loops} | {r['retries']} | "
            f"{r['speech_seconds']:.1f} | {words} |"
        )
    looping = [(r["model"], r["row"], n, t) for r in results for n, texts in r["loops"].items() for t in texts]
    if looping:
        lines += ["", "Segments that loop:"]
        lines += [f"- {m}, {ROWS[row][0]}, {n}: {t[:100]!r}" for m, row, n, t in looping]
    return "\n".join(lines)
