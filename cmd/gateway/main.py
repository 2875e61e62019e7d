"""The HTTP gateway: OpenAI's audio API (POST /v1/audio/transcriptions, /translations, GET /v1/models)
in front of the jobs queue.

    python cmd/gateway/main.py        (GATEWAY_HOST, GATEWAY_PORT; AMQP_URL as for the worker;
                                       /metrics on METRICS_HOST:GATEWAY_METRICS_PORT)
"""

import signal
import sys

import prometheus_client
import uvicorn
from loguru import logger

from worker import wiring
from worker.config import Settings
from worker.logs import configure_logging


def main() -> int:
    settings = Settings.from_environment()
    configure_logging(settings.log_level)
    try:
        keys = wiring.gateway_keys(settings)
        app = wiring.gateway(settings, keys)
    except ValueError as exc:  # a refused configuration: say why, exit 2
        logger.error("{}", exc)
        return 2
    if settings.gateway_metrics_port:
        try:  # per-tenant usage (worker/gateway/usage.py), off the API's port
            prometheus_client.start_http_server(settings.gateway_metrics_port, addr=settings.metrics_host)
        except OSError as exc:
            logger.error(
                "{}:{} (METRICS_HOST:GATEWAY_METRICS_PORT) cannot be served ({}): each gateway on a host needs a "
                "port of its own (or GATEWAY_METRICS_PORT=0)",
                settings.metrics_host,
                settings.gateway_metrics_port,
                exc.strerror,
            )
            return 2
    signal.signal(signal.SIGHUP, lambda *_: keys.ask_reload())  # reload the keys file (and on change)
    print(f"Gateway on http://{settings.gateway_host}:{settings.gateway_port}/", flush=True)
    uvicorn.run(app, host=settings.gateway_host, port=settings.gateway_port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
