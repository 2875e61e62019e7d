"""The HTTP gateway: OpenAI's audio API (POST /v1/audio/transcriptions, /translations, GET /v1/models)
in front of the jobs queue.

    python cmd/gateway/main.py        (GATEWAY_HOST, GATEWAY_PORT; AMQP_URL as for the worker)
"""

import sys

import uvicorn
from loguru import logger

from worker import wiring
from worker.config import Settings
from worker.logs import configure_logging


def main() -> int:
    settings = Settings.from_environment()
    configure_logging(settings.log_level)
    try:
        app = wiring.gateway(settings)
    except ValueError as exc:  # a refused configuration: say why, exit 2
        logger.error("{}", exc)
        return 2
    print(f"Gateway on http://{settings.gateway_host}:{settings.gateway_port}/", flush=True)
    uvicorn.run(app, host=settings.gateway_host, port=settings.gateway_port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
