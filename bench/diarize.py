"""`--diarize`: who spoke when, on conversations made of real speech (worker/devtools/conversations.py).

The set: three stereo calls (two speakers, one per channel, with -20 dB of bleed and some overlap) and
faster-whisper's stereo test file, diarized by channel; four mono conversations of 3-5 speakers,
diarized by voice, the number of speakers estimated and given. Each is written as a 16-bit WAV file
and transcribed through `Processor.process_file` as a job would be (the worker's default settings,
wiring.processor), plain and diarized, every variant in its own process (main.py's children: peak
RSS is the process's own), alternating, `--runs` times each; wall times are the minimum.

Per conversation and diarized variant:
- DER: pyannote.metrics' DiarizationErrorRate(collar=0.25, skip_overlap=False) over the whole file
  (pyannote's collar is the whole width: 0.125 s either side of each reference boundary is not
  scored; overlapping speech is), the hypothesis being the transcript's segments and their speakers;
  its parts (missed speech, false alarm, confusion) as shares of the reference speech;
- speakers found (distinct labels in the segments) against the true number;
- cpWER: each reference speaker's words against those of the speaker the diarization paired with
  them (worker.devtools.accuracy.cp_wer); WER: the whole text against the reference, speakers aside;
- vs plain: WER of the diarized text against the same file's plain transcript (0: diarizing added,
  dropped and changed no word; "channels" transcribes each channel apart, so it may differ);
- cost: the diarized run's wall time over the plain run's, minus 1; "speakers" runs with word
  timestamps (it cuts segments at words), the plain run without, as a job would by default.
"speakers" needs the voice encoder (worker/engine/voices.py, given to the Processor by the wiring):
without it those rows are skipped, saying so.
"""

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from bench.common import AUDIO_DIR, MODELS_DIR, RowResult, timed
from worker import wiring
from worker.config import Settings
from worker.devtools import conversations, known_speakers
from worker.devtools.accuracy import cp_wer, normalize, wer
from worker.devtools.conversations import Conversation
from worker.pipeline import Diarization

HELDOUT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "heldout"
QUICK_CONVERSATIONS = ("call-ls1089-lj", "fw-stereo", "talk-3")
WORD_GAP_SECONDS = 1.0
DIARIZED = re.compile(r"Diarized: (\d+) speakers over (\d+) windows in ([\d.]+) s")


def heldout_conversations() -> list[Conversation]:
    """Calls and talks of the held-out voices (worker/devtools/known_speakers.py), kept out of every
    diarization threshold chosen on ../shared/audio's."""
    held = known_speakers.heldout_speakers(HELDOUT_CACHE)
    allison, librivox, michael, diane, sheila = (held[k] for k in ("allison", "librivox", "michael", "diane", "sheila"))
    return [
        conversations.stereo_call("heldout-call-allison-librivox", allison, librivox, seconds=60, seed=41),
        conversations.stereo_call("heldout-call-michael-allison", michael, allison, seconds=60, seed=42),
        conversations.mono_conversation("heldout-talk-3", [allison, librivox, michael], seconds=90, seed=43),
        conversations.mono_conversation("heldout-talk-4", [diane, allison, sheila, librivox], seconds=60, seed=44),
        conversations.mono_conversation(
            "heldout-talk-5", [allison, diane, michael, sheila, librivox], seconds=100, seed=45
        ),
    ]


def conversation_set(names: list[str] | None = None) -> list[Conversation]:
    speakers = conversations.load_speakers(AUDIO_DIR)
    found = [
        *conversations.calls(speakers),
        conversations.reference_call(AUDIO_DIR),
        *conversations.talks(speakers),
        *heldout_conversations(),
    ]
    if unknown := set(names or ()) - {c.name for c in found}:
        raise SystemExit(
            f"--conversations: unknown {', '.join(sorted(unknown))}; choose from {[c.name for c in found]}"
        )
    return [c for c in found if not names or c.name in names]


def variants(conversation: Conversation) -> list[str]:
    """plain, then the diarized runs: by channel (without and with word times) for a call, by voice
    (counted, then given) for a talk."""
    if conversation.channels > 1:
        return ["plain", "channels", "channels+words"]
    return ["plain", "speakers", f"speakers={len(conversation.speakers)}"]


def diarization(variant: str) -> Diarization | None:
    if variant == "plain":
        return None
    if variant.startswith("channels"):
        return Diarization("channels", words=variant.endswith("+words"))
    count = variant.partition("=")[2]
    return Diarization("speakers", int(count) if count else None, words=True)


def speakers_unavailable(model: str) -> str | None:
    """Why diarize "speakers" cannot run in this checkout, or None."""
    processor = wiring.processor(_settings(), model, wiring.pipeline_options(_settings()))
    if not processor.speakers.available:
        return "skipped: no voice encoder in this checkout (worker/engine/voices.py, wired into Processor(voices=...))"
    return None


def _settings() -> Settings:
    return Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="")


# --- inside the row's process ----------------------------------------------------------------


def child_row(key: str, path: Path) -> dict[str, Any]:
    """`D:<model>:<conversation>:<variant>`: the file at `path` transcribed as that variant says."""
    _, model, _name, variant = key.split(":")
    how = diarization(variant)
    started = time.perf_counter()
    settings = _settings()
    processor = wiring.processor(settings, model, wiring.pipeline_options(settings))
    load = time.perf_counter() - started
    clustered: list[str] = []
    sink = logger.add(
        lambda m: clustered.append(m.record["message"]), level="INFO", filter=lambda r: DIARIZED.match(r["message"])
    )
    words = how is not None and how.words  # "speakers" always has them: turns cut segments at words
    transcript, wall, cpu = timed(
        lambda: processor.process_file(path, language="en", word_timestamps=words, diarization=how)
    )
    logger.remove(sink)
    found = DIARIZED.match(clustered[-1]) if clustered else None
    return {
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "text": transcript.text,
        "details": {
            "variant": processor.model_name,
            "chunks": transcript.chunks,
            "segments": [[s.start, s.end, s.speaker, s.text] for s in transcript.segments],
            "words": [[w.start, w.end, w.speaker] for s in transcript.segments for w in s.words or ()],
            "clustering_seconds": float(found[3]) if found else None,
            "windows": int(found[2]) if found else None,
        },
    }


# --- the parent: run, alternate, score ---------------------------------------------------------


def keys(model: str, conversation: Conversation) -> list[str]:
    return [f"D:{model}:{conversation.name}:{v}" for v in variants(conversation)]


def run_diarize(
    models: list[str],
    runs: int,
    found: list[Conversation],
    scratch: Path,
    run_row: Callable[[str, Path], RowResult],
) -> dict[str, Any]:
    """Every variant of every conversation `runs` times per model, alternating (reversed every other run)."""
    paths = {c.name: conversations.write(c, scratch / f"{c.name}.wav") for c in found}
    skip = speakers_unavailable(models[0]) if any(c.channels == 1 for c in found) else None
    if skip:
        print(f"note: diarize speakers rows {skip}", file=sys.stderr, flush=True)
    report = {"runs": runs, "conversations": [describe(c) for c in found], "speakers_note": skip, "models": {}}
    for model in models:
        order = [(c, k) for c in found for k in keys(model, c)]
        results: dict[str, list[RowResult]] = {k: [] for _, k in order}
        for run in range(runs):
            for conversation, key in order if run % 2 == 0 else order[::-1]:
                print(f"run {run + 1}/{runs}: {key} ...", file=sys.stderr, flush=True)
                if skip and conversation.channels == 1:  # its plain run too: nothing to compare it with
                    results[key].append(RowResult(key, status=skip))
                else:
                    results[key].append(run_row(key, paths[conversation.name]))
        report["models"][model] = score_model(model, found, results)
    return report


def describe(c: Conversation) -> dict[str, Any]:
    overlap = sum(
        max(0.0, min(a.end, b.end) - max(a.start, b.start)) for i, a in enumerate(c.turns) for b in c.turns[i + 1 :]
    )
    return {
        "name": c.name,
        "seconds": round(c.seconds, 2),
        "channels": c.channels,
        "speakers": list(c.speakers),
        "turns": len(c.turns),
        "overlap_seconds": round(overlap, 2),
        "reference_words": len(normalize(c.text).split()),
    }


def _summary(runs: list[RowResult]) -> dict[str, Any]:
    ok = [r for r in runs if r.wall is not None]
    if not ok:
        return {"status": runs[0].status}
    return {
        "status": "ok",
        "walls": [round(r.wall, 2) for r in ok],
        "wall_seconds": min(r.wall for r in ok),
        "peak_rss_mb": min(r.peak_rss_mb or 0 for r in ok),
        "same_text_every_run": len({r.text for r in ok}) == 1,
        "text": ok[0].text,
        "details": ok[0].details,
    }


def score_model(model: str, found: list[Conversation], results: dict[str, list[RowResult]]) -> dict[str, Any]:
    rows = []
    for conversation in found:
        names = keys(model, conversation)
        plain = _summary(results[names[0]])
        for key in names[1:]:
            diarized = _summary(results[key])
            row = {"conversation": conversation.name, "mode": key.split(":")[3], "status": diarized["status"]}
            if diarized["status"] == "ok" and plain["status"] == "ok":
                row |= score(conversation, plain, diarized)
            elif diarized["status"] == "ok":
                row["status"] = f"plain run {plain['status']}"
            rows.append(row)
    return {"rows": rows, "totals": totals(rows)}


def score(conversation: Conversation, plain: dict[str, Any], diarized: dict[str, Any]) -> dict[str, Any]:
    segments, words = diarized["details"]["segments"], diarized["details"]["words"]
    der = _der(conversation, [(start, end, speaker) for start, end, speaker, _ in segments])
    by_word = _der(conversation, runs_of_words(words))["diarization error rate"] if words else None
    speakers = {speaker for _, _, speaker, _ in segments if speaker is not None}
    said = {s: " ".join(text for _, _, who, text in segments if who == s) for s in sorted(speakers)}
    attributed = cp_wer(conversation.texts_by_speaker(), said)
    return {
        "seconds": conversation.seconds,
        "true_speakers": len(conversation.speakers),
        "found_speakers": len(speakers),
        "der": der["diarization error rate"],
        "der_words": by_word,
        "scored_seconds": der["total"],
        "missed_seconds": der["missed detection"],
        "false_alarm_seconds": der["false alarm"],
        "confusion_seconds": der["confusion"],
        "cp_errors": attributed.errors,
        "reference_words": attributed.words,
        "cp_wer": attributed.rate,
        "pairs": attributed.pairs,
        "wer": wer([conversation.text], [diarized["text"]]),
        "plain_wer": wer([conversation.text], [plain["text"]]),
        "vs_plain": wer([plain["text"]], [diarized["text"]]) if plain["text"] else None,
        "plain_wall_seconds": plain["wall_seconds"],
        "wall_seconds": diarized["wall_seconds"],
        "cost": diarized["wall_seconds"] / plain["wall_seconds"] - 1,
        "clustering_seconds": diarized["details"].get("clustering_seconds"),
        "plain_peak_rss_mb": plain["peak_rss_mb"],
        "peak_rss_mb": diarized["peak_rss_mb"],
        "walls": {"plain": plain["walls"], "diarized": diarized["walls"]},
        "same_text_every_run": plain["same_text_every_run"] and diarized["same_text_every_run"],
    }


def _der(conversation: Conversation, spans: list[tuple[float, float, str | None]]) -> dict[str, float]:
    """DER and its parts (seconds) of these labelled spans (unlabelled: speaker "?")."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    found = Annotation(uri=conversation.name)
    for track, (start, end, speaker) in enumerate(spans):
        if end > start:
            found[Segment(start, end), track] = speaker or "?"
    metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
    return metric(conversation.annotation(), found, uem=conversation.uem(), detailed=True)


def runs_of_words(words: list[list[Any]]) -> list[tuple[float, float, str | None]]:
    """Each speaker's words as spans, joined across pauses of up to WORD_GAP_SECONDS (a reference turn
    holds its speaker's pauses too)."""
    spans: dict[str | None, list[list[Any]]] = {}
    for start, end, speaker in sorted(words):
        own = spans.setdefault(speaker, [])
        if own and start - own[-1][1] <= WORD_GAP_SECONDS:
            own[-1][1] = max(own[-1][1], end)
        else:
            own.append([start, end])
    return [(start, end, speaker) for speaker, own in spans.items() for start, end in own]


def totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode, over its conversations: DER and cpWER pooled (seconds and words added up), cost of the summed walls."""
    out = {}
    for mode in dict.fromkeys(_mode_kind(r["mode"]) for r in rows):
        scored = [r for r in rows if _mode_kind(r["mode"]) == mode and r["status"] == "ok"]
        if not scored:
            continue
        total = sum(r["scored_seconds"] for r in scored)
        wrong = {k: sum(r[k] for r in scored) for k in ("missed_seconds", "false_alarm_seconds", "confusion_seconds")}
        out[mode] = {
            "conversations": len(scored),
            "seconds": sum(r["seconds"] for r in scored),
            "der": sum(wrong.values()) / total,
            **{k.replace("_seconds", "_share"): v / total for k, v in wrong.items()},
            "der_words": _pooled_der_words(scored),
            "speakers_right": sum(r["found_speakers"] == r["true_speakers"] for r in scored),
            "cp_wer": sum(r["cp_errors"] for r in scored) / sum(r["reference_words"] for r in scored),
            "cost": sum(r["wall_seconds"] for r in scored) / sum(r["plain_wall_seconds"] for r in scored) - 1,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in scored),
            "plain_peak_rss_mb": max(r["plain_peak_rss_mb"] for r in scored),
        }
    return out


def _pooled_der_words(rows: list[dict[str, Any]]) -> float | None:
    if any(r["der_words"] is None for r in rows):
        return None
    return sum(r["der_words"] * r["scored_seconds"] for r in rows) / sum(r["scored_seconds"] for r in rows)


def _mode_kind(mode: str) -> str:
    return "speakers, count given" if mode.startswith("speakers=") else mode


# --- the table ------------------------------------------------------------------------------------


def diarize_markdown(report: dict[str, Any]) -> str:
    lines = ["### Diarization (cmd/bench/main.py --diarize)", ""]
    lines += [
        f"- {c['name']}: {c['seconds']:.0f} s, {c['channels']} channel(s), speakers {', '.join(c['speakers'])}; "
        f"{c['turns']} turns, {c['overlap_seconds']:.1f} s overlapping, {c['reference_words']} words"
        for c in report["conversations"]
    ]
    if report["speakers_note"]:
        lines.append(f"- diarize speakers: {report['speakers_note']}")
    for model, table in report["models"].items():
        lines += [
            "",
            f"Model {model}; wall times: min of {report['runs']} alternating runs, each in its own process.",
            "",
            "| conversation | mode | speakers true / found | DER | missed / false alarm / confusion | DER, words "
            "| cpWER | WER | vs plain | wall plain / diarized s | cost | peak RSS MB plain / diarized |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in table["rows"]:
            if r["status"] != "ok":
                lines.append(
                    f"| {r['conversation']} | {r['mode']} | - | - | - | - | - | - | - | - | - | {r['status']} |"
                )
                continue
            parts = " / ".join(
                f"{r[k] / r['scored_seconds']:.1%}"
                for k in ("missed_seconds", "false_alarm_seconds", "confusion_seconds")
            )
            lines.append(
                f"| {r['conversation']} | {r['mode']} | {r['true_speakers']} / {r['found_speakers']} | {r['der']:.1%} "
                f"| {parts} | {_pct(r['der_words'])} | {r['cp_wer']:.1%} | {r['wer']:.1%} | {_pct(r['vs_plain'])} "
                f"| {r['plain_wall_seconds']:.1f} / {r['wall_seconds']:.1f} | {r['cost']:+.0%} "
                f"| {r['plain_peak_rss_mb']:.0f} / {r['peak_rss_mb']:.0f} |"
            )
        for mode, t in table["totals"].items():
            parts = " / ".join(f"{t[k]:.1%}" for k in ("missed_share", "false_alarm_share", "confusion_share"))
            lines.append(
                f"| **all {t['conversations']}** | {mode} | right in {t['speakers_right']} | {t['der']:.1%} | {parts} "
                f"| {_pct(t['der_words'])} | {t['cp_wer']:.1%} | | | | {t['cost']:+.0%} "
                f"| {t['plain_peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "DER: pyannote.metrics, collar 0.25 s (0.125 s each side of a reference boundary), overlap scored, "
        "hypothesis = the transcript's segments; DER, words: the hypothesis is each speaker's words instead, "
        f"joined across pauses up to {WORD_GAP_SECONDS:g} s. cpWER: each speaker's words against the diarized speaker paired "
        "with them. vs plain: the diarized text against the plain transcript of the same file. cost: diarized wall "
        "time / plain wall time - 1 (speakers: with word timestamps, which it needs).",
    ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
