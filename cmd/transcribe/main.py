"""Transcribe one local audio file (any format ffmpeg reads), no broker involved.

    python cmd/transcribe/main.py AUDIO [--format txt|srt|vtt|json] [--model NAME] [--language xx]
"""

import argparse
import sys
from pathlib import Path

from loguru import logger

from worker.audio import SAMPLE_RATE, decode_audio
from worker.config import Settings
from worker.errors import PermanentError
from worker.formats import FORMATS, render
from worker.logs import configure_logging
from worker.model_downloader import get_model_downloader
from worker.transcriber import WhisperTranscriber


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("--format", choices=FORMATS, default="txt")
    parser.add_argument("--model", help="whisper.cpp model name (default: WHISPER_MODEL)")
    parser.add_argument("--language", help="spoken language code; default: detect (multilingual models)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    model = args.model or settings.whisper_model
    try:
        downloader = get_model_downloader(
            settings.whisper_models_dir,
            download_url=settings.whisper_download_url,
            timeout_seconds=settings.whisper_download_timeout_seconds,
        )
        transcriber = WhisperTranscriber(
            downloader.ensure_model_exists(model), n_threads=settings.whisper_threads or None,
            beam_size=settings.whisper_beam_size,
        )
        audio = decode_audio(args.audio)
        result = transcriber.transcribe(audio, language=args.language, task=args.task)
    except PermanentError as exc:
        logger.error("{}", exc)
        return 2
    document = {
        "text": result.text,
        "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in result.segments],
        "language": result.language,
        "language_probability": result.language_probability,
        "duration_seconds": round(audio.size / SAMPLE_RATE, 3),
        "model": model,
    }
    sys.stdout.write(render(args.format, text=result.text, segments=result.segments, document=document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
