"""Logging set-up, called once by each entry point (never by library code)."""

import logging
import sys

from loguru import logger

_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "{extra[job_id]} | <cyan>{name}</cyan>:<cyan>{line}</cyan> - <level>{message}</level>"
)


class _InterceptHandler(logging.Handler):
    """Route records of stdlib loggers (pika, urllib3) into loguru, keeping their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(level: str) -> None:
    """Send logs at `level` and above to stderr, with the job id (or '-') on every line."""
    logger.remove()
    logger.configure(extra={"job_id": "-"})
    logger.add(sys.stderr, level=level, format=_FORMAT, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    # pika logs every frame at DEBUG; its warnings are what operators need.
    logging.getLogger("pika").setLevel(logging.WARNING)
    # pywhispercpp announces every call at INFO; the transcriber logs what matters.
    logging.getLogger("pywhispercpp").setLevel(logging.WARNING)
