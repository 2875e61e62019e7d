"""`--known-speakers`: known speakers named on 3-voice conversations (worker/devtools/known_speakers.py).

Each conversation is transcribed by the worker's pipeline with diarize "speakers" and its known speakers
(two of the three voices, plus one who is not there), each given by a clip the conversation does not
contain. Per conversation: the share of speech time whose segment carries the right label (a named
voice's name; for the unnamed voice, a letter), the speakers found, and which voice got which name.
The first set is what TurnOptions.known_similarity / known_window_similarity were chosen on; the
held-out set was kept out of that choice. Accuracy only: no times are measured.
"""

import tempfile
from pathlib import Path
from typing import Any

from bench.common import AUDIO_DIR, MODELS_DIR
from worker import wiring
from worker.config import Settings
from worker.devtools import known_speakers
from worker.devtools.conversations import write
from worker.pipeline import Diarization, KnownVoice, known_voice

HELDOUT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "heldout"


def run_known(model: str) -> list[dict[str, Any]]:
    settings = Settings(whisper_models_dir=MODELS_DIR, whisper_download_url="")
    processor = wiring.processor(settings, model, wiring.pipeline_options(settings))
    sets = {
        "first": known_speakers.first_set(AUDIO_DIR),
        "held-out": known_speakers.heldout_set(HELDOUT_CACHE, AUDIO_DIR),
    }
    rows = []
    for set_name, cases in sets.items():
        for case in cases:
            known = tuple(known_voice(name, clip) for name, clip in case.known.items())
            with tempfile.TemporaryDirectory(prefix="bench-known-") as scratch:
                path = write(case.conversation, Path(scratch) / f"{case.name}.wav")
                transcript = processor.process_file(
                    path, language="en", diarization=Diarization("speakers", known=known)
                )
            segments = [(s.start, s.end, s.speaker or "") for s in transcript.segments]
            rows.append({"set": set_name, "case": case.name, **_scored(case, segments, known)})
    return rows


def _scored(case: known_speakers.Case, segments: list[tuple[float, float, str]], known: tuple[KnownVoice, ...]) -> dict:
    labels = sorted({label for _, _, label in segments})
    return {
        "right": known_speakers.score(case, segments),
        "voices": len(case.conversation.speakers),
        "labels": labels,
        "named": [k.name for k in known if k.name in labels],
        "absent named": [k.name for k in known if k.name in labels and k.name not in case.conversation.speakers],
    }


def known_markdown(rows: list[dict[str, Any]], model: str) -> str:
    out = [
        f"Known speakers, model {model} (3 voices each; 2 of them named, plus 1 absent speaker named)\n\n",
        "| set | conversation | speech labelled right | labels | named | absent speaker named |\n",
        "|---|---|---|---|---|---|\n",
    ]
    for r in rows:
        out.append(
            f"| {r['set']} | {r['case']} | {100 * r['right']:.1f}% | {', '.join(r['labels'])} | "
            f"{', '.join(r['named'])} | {', '.join(r['absent named']) or 'none'} |\n"
        )
    return "".join(out)
