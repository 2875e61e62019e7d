"""The worker service: consume transcription jobs from RabbitMQ and publish their results.

    python cmd/consumer/main.py            (LOG_LEVEL=DEBUG for per-chunk timings and cache hits)

First SIGTERM/SIGINT: stop taking jobs, finish the one in flight, exit 0.
Second: exit at once; the broker requeues the unacknowledged job.
"""

import dataclasses
import functools
import os
import signal
import sys
import threading
from pathlib import Path

from loguru import logger

from worker import metrics
from worker.config import Settings
from worker.consumer import Consumer
from worker.handler import HandlerOptions, JobHandler
from worker.logs import configure_logging
from worker.model_downloader import downloader_for
from worker.processor import Processor
from worker.publisher import Topology
from worker.transcriber import WhisperTranscriber, available_cpus
from worker.workdir import WorkDir


class Processors:
    """One Processor (and so one WhisperTranscriber) per model, created on first use, per process."""

    def __init__(self, settings: Settings, work_dir: Path) -> None:
        self._settings = settings
        self._work_dir = work_dir
        # Each of the jobs that run at once gets an equal share of the CPUs.
        self._options = dataclasses.replace(
            settings.pipeline_options(), cpus=max(1, available_cpus() // settings.concurrent_jobs))
        self._downloader = downloader_for(settings)
        self._by_model: dict[str, Processor] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str | None) -> Processor:
        name = model or self._settings.whisper_model
        with self._lock:
            if name not in self._by_model:
                path = self._downloader.ensure_model_exists(name)  # UnknownModel/ModelUnavailable: permanent
                transcriber = WhisperTranscriber(
                    path, max_concurrent_calls=self._options.concurrent_calls * self._settings.concurrent_jobs,
                    beam_size=self._settings.whisper_beam_size,
                )
                self._by_model[name] = Processor(transcriber, model_name=name, options=self._options,
                                                 work_root=self._work_dir)
            return self._by_model[name]


def build_consumer(settings: Settings, work_dir: Path) -> Consumer:
    processors = Processors(settings, work_dir)
    processors(None)  # load the default model before taking jobs: a broken model fails at start-up
    handler = JobHandler(processors, HandlerOptions(
        input_dir=settings.input_dir, output_dir=settings.output_dir, work_dir=work_dir,
        allowed_url_hosts=settings.url_hosts(), delivery_limit=settings.delivery_limit,
        max_download_bytes=settings.max_download_bytes, download_timeout_seconds=settings.download_timeout_seconds,
        callback_timeout_seconds=settings.callback_timeout_seconds, callback_retries=settings.callback_retries,
        retry_backoff_seconds=settings.retry_backoff_seconds,
        retry_backoff_max_seconds=settings.retry_backoff_max_seconds,
    ))
    return Consumer(url=settings.amqp_url.get_secret_value(), topology=Topology.from_settings(settings), handler=handler,
                    concurrent_jobs=settings.concurrent_jobs, heartbeat_seconds=settings.heartbeat_seconds,
                    reconnect_max_seconds=settings.reconnect_max_seconds, on_settled=metrics.record)


def on_signal(consumer: Consumer, signum: int, _frame) -> None:
    if consumer.stopping:
        logger.warning("Second {}: exiting now; the broker requeues the job in flight", signal.Signals(signum).name)
        os._exit(0)
    consumer.stop()  # before logging, so that a second signal arriving meanwhile counts as the second
    logger.info("{} received: finishing the job in flight, then exiting", signal.Signals(signum).name)


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_level)
    with WorkDir.claim(settings.work_dir) as work_dir:
        consumer = build_consumer(settings, work_dir.path)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, functools.partial(on_signal, consumer))
        metrics.IN_FLIGHT.set_function(lambda: consumer.in_flight)
        if settings.metrics_port:
            metrics.serve(settings.metrics_port, consumer.connected.is_set)
        consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
