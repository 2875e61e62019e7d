"""`--words`: how right word timestamps are, and what they cost (LJ Speech, 32 sentences, 231 s).

Accuracy: the concatenation's clips are joined by 0.3 s of digital silence, so each sentence's
bounds are read off the samples (worker/devtools/word_timing.py); per sentence, the error of its
first word's start and of its last word's end; the table gives medians and 90th percentiles.

Rows, alternating, `runs` times each (wall time: the minimum):
- pipeline / pipeline + words: the worker's pipeline (defaults, 2 chunks at once x 1 thread) on
  the recording, without and with `word_timestamps` (whisper.cpp's token timestamps);
- tokens / DTW: the lever not taken. The same chunks, one whisper.cpp call each (2 threads), on a
  flash-attention context with token timestamps, and on a context with the model's DTW alignment
  heads (whisper.cpp 1.8.5 drops DTW under flash attention, so that context has it off). A token's
  DTW time is where the alignment path moves on to the next token, i.e. the token's end: a word
  runs from the previous token's time to its last token's;
- tokens without the no_speech_prob pass: what the extra decoder pass per call (whisper.cpp 1.8.5's
  own value is wrong unless the prompt is one token; see worker/engine/libwhisper/full.py) costs.
"""

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import AUDIO_DIR, MODELS_DIR
from worker import wiring
from worker.config import Settings
from worker.devtools.word_timing import EdgeErrors, clip_bounds, edge_errors
from worker.engine import libwhisper
from worker.engine.libwhisper.structs import ALIGNMENT_HEADS_PRESETS
from worker.engine.transcriber import word_tokens
from worker.media.audio import SAMPLE_RATE, InMemoryAudio, decode_audio

LJ = "ljspeech_LJ001-0001_to_0032_concat.wav"


@dataclass(frozen=True)
class TimedWord:
    start: float
    end: float


def run_words(model: str, runs: int) -> dict[str, Any]:
    samples = decode_audio(AUDIO_DIR / LJ)
    bounds = clip_bounds(samples, SAMPLE_RATE)
    settings = Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="")
    processor = wiring.processor(settings, model, wiring.pipeline_options(settings))
    chunks = processor.prepare_audio(InMemoryAudio(samples), language="en").chunks
    lib = libwhisper.open_library()
    path = processor.transcriber.model_path
    flash = libwhisper.NativeContext(lib, path, flash_attn=True)
    dtw = libwhisper.NativeContext(lib, path, alignment_heads=ALIGNMENT_HEADS_PRESETS[_family(processor.model_name)])
    rows = {
        "pipeline": lambda: _pipeline_words(processor, samples, words=False),
        "pipeline + words": lambda: _pipeline_words(processor, samples, words=True),
        "tokens (flash attention)": lambda: _direct_words(flash, samples, chunks, dtw=False),
        "tokens, no no_speech_prob pass": lambda: _direct_words(flash, samples, chunks, dtw=False, no_speech=False),
        "DTW (alignment heads, no flash attention)": lambda: _direct_words(dtw, samples, chunks, dtw=True),
    }
    walls: dict[str, list[float]] = {name: [] for name in rows}
    words: dict[str, list[TimedWord] | None] = {}
    for _ in range(runs):
        for name, work in rows.items():  # alternating: every row once per round
            started = time.perf_counter()
            words[name] = work()
            walls[name].append(time.perf_counter() - started)
    flash.close()
    dtw.close()
    return {
        "model": processor.model_name,
        "seconds": samples.size / SAMPLE_RATE,
        "sentences": len(bounds),
        "chunks": len(chunks),
        "runs": runs,
        "rows": {
            name: {
                "wall": min(walls[name]),
                "errors": None if words[name] is None else edge_errors(bounds, words[name]),
            }
            for name in rows
        },
    }


def _family(model_name: str) -> str:
    """tiny.en-q8_0 -> tiny.en: quantization keeps the alignment heads."""
    return model_name.split("-q")[0].removesuffix("-f16")


def _pipeline_words(processor, samples: np.ndarray, *, words: bool) -> list[TimedWord] | None:
    transcript = processor.process_samples(samples, language="en", word_timestamps=words)
    return [TimedWord(w.start, w.end) for s in transcript.segments for w in s.words] if words else None


def _direct_words(ctx, samples: np.ndarray, chunks, *, dtw: bool, no_speech: bool = True) -> list[TimedWord]:
    found = []
    with ctx.new_state() as state:
        for chunk in chunks:
            result = libwhisper.transcribe(
                ctx,
                state,
                samples[chunk.start : chunk.end],
                n_threads=2,
                language="en",
                translate=False,
                beam_size=1,
                temperature_fallback=False,
                token_timestamps=not dtw,
                no_speech_prob=no_speech,
            )
            offset = chunk.start / SAMPLE_RATE
            found += [_shift(w, offset) for w in (_dtw_words if dtw else _token_words)(result.segments, ctx.eot)]
    return found


def _shift(word: TimedWord, seconds: float) -> TimedWord:
    return TimedWord(word.start + seconds, word.end + seconds)


def _token_words(segments, eot: int) -> list[TimedWord]:
    return [TimedWord(g[0].t0 / 100, g[-1].t1 / 100) for s in segments for g in word_tokens(s, eot)]


def _dtw_words(segments, eot: int) -> list[TimedWord]:
    found, previous_end = [], None
    for segment in segments:
        for group in word_tokens(segment, eot):
            start = segment.start if previous_end is None else previous_end
            found.append(TimedWord(start, group[-1].t_dtw / 100))
            previous_end = group[-1].t_dtw / 100
    return found


def words_markdown(report: dict[str, Any]) -> str:
    pipeline = report["rows"]["pipeline"]["wall"]
    lines = [
        f"\n### Word timestamps ({report['model']}, {report['seconds']:.0f} s of LJ Speech, {report['sentences']} "
        f"sentences, {report['chunks']} chunks; min of {report['runs']} alternating runs)\n",
        "| row | wall | vs pipeline | first-word start error, median / p90 | last-word end error, median / p90 |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        e: EdgeErrors | None = row["errors"]
        if e is None:
            errors = ["-", "-"]
        else:
            errors = [f"{statistics.median(v):.3f} / {np.percentile(v, 90):.3f} s" for v in (e.first_start, e.last_end)]
            if e.clips_without_words:
                errors[0] += f" ({e.clips_without_words} sentences without words)"
        ratio = f"{row['wall'] / pipeline:.2f}x" if name.startswith("pipeline") else "-"
        lines.append(f"| {name} | {row['wall']:.1f} s | {ratio} | {errors[0]} | {errors[1]} |")
    direct = report["rows"]
    tokens, dtw = (
        direct["tokens (flash attention)"]["wall"],
        direct["DTW (alignment heads, no flash attention)"]["wall"],
    )
    lines.append(f"\nDTW against token timestamps, same chunks and calls: {dtw / tokens:.2f}x the wall time.")
    bare = direct["tokens, no no_speech_prob pass"]["wall"]
    lines.append(
        f"The no_speech_prob decoder pass (one per call, {report['chunks']} calls): "
        f"{(tokens - bare) / report['chunks'] * 1000:+.0f} ms per call ({tokens / bare - 1:+.1%})."
    )
    return "\n".join(lines) + "\n"
