"""Transcribe one local audio file (any format ffmpeg reads) through the chunked pipeline, no broker.

python cmd/transcribe/main.py AUDIO [--format txt|srt|vtt|json] [--model NAME]
                              [--language xx] [--task transcribe|translate] [--prompt TEXT] [--word-timestamps]
                              [--vad on|off] [--vad-threshold P] [--diarize channels|speakers]
                              [--num-speakers N] [--sequential | --workers N]
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from loguru import logger

from worker import wiring
from worker.config import Settings
from worker.errors import PermanentError, TranscriptionError
from worker.formats import FORMATS, render
from worker.logs import configure_logging
from worker.media.speech import VadOptions
from worker.pipeline import Diarization, VadChoice


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("--format", choices=FORMATS, default="txt")
    parser.add_argument("--model", help="whisper.cpp model name (default: WHISPER_MODEL)")
    parser.add_argument("--language", help="spoken language code; default: detect (multilingual models)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    parser.add_argument("--prompt", help="text that conditions every chunk (names, spellings, style)")
    parser.add_argument("--word-timestamps", action="store_true", help="each segment's words with times (json)")
    parser.add_argument("--vad", choices=("on", "off"), help="speech detection (default: CHUNKING); off: energy chunks")
    parser.add_argument("--vad-threshold", type=float, help="speech probability that starts speech (default 0.5)")
    parser.add_argument("--diarize", choices=("channels", "speakers"), help="label who spoke when")
    parser.add_argument("--num-speakers", type=int, help="speakers in the recording (--diarize speakers)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sequential", action="store_true", help="one chunk at a time, all CPU threads")
    mode.add_argument("--workers", type=int, help="chunks transcribed at once (default: MAX_PARALLEL_WORKERS)")
    return parser.parse_args(argv)


def vad_choice(args: argparse.Namespace, configured: VadOptions) -> VadChoice:
    if args.vad == "off":
        return False
    if args.vad_threshold is not None:
        return dataclasses.replace(configured, threshold=args.vad_threshold)
    return True if args.vad == "on" else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_environment()
    configure_logging(settings.log_level)
    model = args.model or settings.whisper_model
    options = wiring.pipeline_options(
        settings, parallel=False if args.sequential else (True if args.workers else None), workers=args.workers
    )
    try:
        processor = wiring.processor(settings, model, options)
        transcript = processor.process_file(
            args.audio,
            language=args.language,
            task=args.task,
            prompt=args.prompt,
            word_timestamps=args.word_timestamps or args.diarize is not None,  # cut at turns or pauses
            vad=vad_choice(args, processor.options.vad),
            diarization=Diarization(args.diarize, args.num_speakers, words=args.word_timestamps)
            if args.diarize
            else None,
        )
    except (PermanentError, TranscriptionError) as exc:
        logger.error("{}", exc)
        return 2
    sys.stdout.write(
        render(args.format, text=transcript.text, segments=transcript.segments, document=transcript.document())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
