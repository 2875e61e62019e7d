"""Provide a whisper.cpp model by hand: validate, download or convert it; or convert a CTranslate2 directory.

python cmd/models/main.py ensure NAME                 (prints the model file's path)
python cmd/models/main.py convert CT2_DIR OUT.bin [--quantization f16|q4_0|q5_0|q8_0]
"""

import argparse
import sys
from pathlib import Path

from loguru import logger

from worker import wiring
from worker.config import Settings
from worker.engine import ggml_convert
from worker.engine.catalog import model_names
from worker.engine.models import convert_to
from worker.engine.quantize import QUANT_TYPES
from worker.errors import ModelConversionError, ModelUnavailable
from worker.logs import configure_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser("ensure", help="validate, download or convert a model; print its path")
    ensure.add_argument("name", choices=model_names(), help="a bare name (tiny.en, base) gets its default variant")
    convert = commands.add_parser("convert", help="convert a CTranslate2 Whisper model directory to ggml")
    convert.add_argument("ct2_dir", type=Path)
    convert.add_argument("out", type=Path)
    convert.add_argument("--quantization", choices=["f16", *sorted(QUANT_TYPES)], default="f16")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_environment()
    configure_logging(settings.log_level)
    try:
        if args.command == "ensure":
            print(wiring.model_downloader(settings).provide(args.name)[1])
        else:
            source = ggml_convert.Ct2Source.from_dir(args.ct2_dir)
            print(convert_to(source, args.out, origin=str(args.ct2_dir.resolve()), quantization=args.quantization).path)
    except (ModelUnavailable, ModelConversionError) as exc:
        logger.error("{}", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
