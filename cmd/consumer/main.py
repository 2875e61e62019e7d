"""The worker service: consume transcription jobs from RabbitMQ and publish their results.

    python cmd/consumer/main.py            (LOG_LEVEL=DEBUG for per-chunk timings and cache hits)

First SIGTERM/SIGINT: stop taking jobs, finish the one in flight, exit 0.
Second: exit at once; the broker requeues the unacknowledged job.
"""

import functools
import os
import signal
import sys

from loguru import logger

from worker import wiring
from worker.config import Settings
from worker.logs import configure_logging
from worker.service import metrics
from worker.service.consumer import Consumer
from worker.service.scratch import WorkDir


def on_signal(consumer: Consumer, signum: int, _frame) -> None:
    if consumer.stopping:
        logger.warning("Second {}: exiting now; the broker requeues the job in flight", signal.Signals(signum).name)
        os._exit(0)
    consumer.stop()  # before logging, so that a second signal arriving meanwhile counts as the second
    logger.info("{} received: finishing the job in flight, then exiting", signal.Signals(signum).name)


_EARLY_SIGNALS: list[int] = []


def before_consuming(signum: int, _frame) -> None:
    """A signal while the model loads: remembered, and the worker stops before taking any job (no raise
    here: the handler may run inside a callback from libwhisper, where an exception is swallowed)."""
    _EARLY_SIGNALS.append(signum)
    logger.info("{} received while starting: exiting before taking any job", signal.Signals(signum).name)


def main() -> int:
    settings = Settings.from_environment()
    configure_logging(settings.log_level)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, before_consuming)
    with WorkDir.claim(settings.work_dir) as work_dir:
        consumer = wiring.consumer(
            settings, work_dir.path, on_settled=metrics.record, on_chunk_settled=metrics.record_chunk
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, functools.partial(on_signal, consumer))
        if _EARLY_SIGNALS:
            consumer.stop()  # run() then returns at once: nothing was taken
        metrics.IN_FLIGHT.set_function(lambda: consumer.in_flight)
        metrics.BROKER_CONNECTS.set_function(lambda: consumer.connections)
        topology = wiring.topology(settings)
        metrics.watch_queue_depths(
            consumer.queue_depths, [q for q in (topology.jobs_queue, topology.chunks_queue) if q]
        )
        if settings.metrics_port:
            try:
                metrics.serve(settings.metrics_port, consumer.connected.is_set, host=settings.metrics_host)
            except OSError as exc:
                logger.error(
                    "{}:{} (METRICS_HOST:METRICS_PORT) cannot be served ({}): each worker on a host needs a "
                    "METRICS_PORT of its own (or METRICS_PORT=0), and METRICS_HOST an address of this host",
                    settings.metrics_host,
                    settings.metrics_port,
                    exc.strerror,
                )
                return 2
        consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
