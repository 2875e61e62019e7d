"""Provide a whisper.cpp model by hand: validate, download or convert it; or convert a CTranslate2 directory.

python cmd/models/main.py ensure NAME                 (prints the model file's path)
python cmd/models/main.py convert CT2_DIR OUT.bin
"""

import argparse
import sys
from pathlib import Path

from loguru import logger

from worker import wiring
from worker.config import Settings
from worker.engine import ggml_convert
from worker.engine.models import MODEL_CONFIGS, convert_to
from worker.errors import ModelConversionError, ModelUnavailable
from worker.logs import configure_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser("ensure", help="validate, download or convert a model; print its path")
    ensure.add_argument("name", choices=sorted(MODEL_CONFIGS))
    convert = commands.add_parser("convert", help="convert a CTranslate2 Whisper model directory to ggml")
    convert.add_argument("ct2_dir", type=Path)
    convert.add_argument("out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        if args.command == "ensure":
            print(wiring.model_downloader(settings).ensure_model_exists(args.name))
        else:
            source = ggml_convert.Ct2Source.from_dir(args.ct2_dir)
            print(convert_to(source, args.out, origin=str(args.ct2_dir.resolve())).path)
    except (ModelUnavailable, ModelConversionError) as exc:
        logger.error("{}", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
