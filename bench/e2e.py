"""Row 6: the real worker process behind a private rabbitmq-server (only 127.0.0.1 is contacted)."""

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import MODELS_DIR, ROOT, Recording, RowResult, proc_cpu_seconds, proc_status_mb
from worker.media.audio import SAMPLE_RATE, write_wav
from worker.media.chunking import split

# --- row 6: the worker process behind a private broker --------------------------------------------


@dataclass
class E2EContext:
    """A private broker, the worker process, and a channel of ours to enqueue jobs and read results."""

    broker: Any
    worker: subprocess.Popen
    work_dir: Path
    channel: Any
    topology: Any
    reply_to: str

    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"


def _topology(lane: bool = True):
    import dataclasses

    from worker.service.publisher import Topology

    topology = Topology(
        jobs_queue="bench.jobs",
        results_queue="bench.results",
        dead_letter_exchange="bench.dlx",
        dead_letter_queue="bench.jobs.dead",
        progress_exchange="bench.progress",
        delivery_limit=5,
        # Fan-out as the worker's defaults have it (on, over FANOUT_MIN_SECONDS), on a queue of the bench's.
        chunks_queue="bench.chunks",
        chunks_dead_letter_queue="bench.chunks.dead",
        interactive_queue="bench.jobs.interactive",
    )
    return topology if lane else dataclasses.replace(topology, interactive_queue=None)


def start_worker(url: str, work_dir: Path, model: str, topology, extra_env: dict | None = None) -> subprocess.Popen:
    from worker.devtools.topology_env import topology_env

    env = {
        **os.environ,
        **topology_env(topology),
        "ENV_FILE": "",  # no developer's .env in a measurement
        "AMQP_URL": url,
        "INPUT_DIR": str(work_dir / "input"),
        "OUTPUT_DIR": str(work_dir / "output"),
        "WHISPER_DOWNLOAD_URL": "",
        "WHISPER_MODELS_DIR": str(MODELS_DIR),
        "WHISPER_MODEL": model,
        "METRICS_PORT": "0",
        "MAX_PARALLEL_WORKERS": "2",
        "USE_PARALLEL_TRANSCRIPTION": "true",
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    (work_dir / "input").mkdir(parents=True, exist_ok=True)
    log = open(work_dir / "worker.log", "wb")
    return subprocess.Popen(
        [sys.executable, "cmd/consumer/main.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_until_consuming(ctx: E2EContext, timeout: float = 180.0) -> None:
    """Until the worker has loaded its model and consumes the jobs queue."""
    deadline = time.monotonic() + timeout
    while ctx.channel.queue_declare(ctx.topology.jobs_queue, passive=True).method.consumer_count < 1:
        if ctx.worker.poll() is not None or time.monotonic() > deadline:
            tail = (ctx.work_dir / "worker.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the worker is not consuming (exit code {ctx.worker.returncode}):\n{tail}")
        ctx.channel.connection.sleep(0.2)


def run_job(ctx: E2EContext, relative_path: str, model: str, timeout: float):
    """Enqueue one job as cmd/enqueue does; (Result, seconds from publish to result, publish time.time())."""
    from worker.messages import Job, Result
    from worker.service.publisher import publish_job

    job_id = uuid.uuid4().hex
    job = Job.model_validate({"job_id": job_id, "audio": {"path": relative_path}, "model": model})
    started, published = time.perf_counter(), time.time()
    publish_job(
        ctx.channel,
        ctx.topology,
        job.model_dump_json(exclude_none=True).encode(),
        job_id,
        reply_to=ctx.reply_to,
        published_at=published,
    )
    deadline = time.monotonic() + timeout
    for _method, properties, body in ctx.channel.consume(ctx.reply_to, auto_ack=True, inactivity_timeout=1.0):
        if body is not None and properties.correlation_id == job_id:
            result = Result.model_validate_json(body)
            if result.status != "completed":
                raise RuntimeError(f"job {job_id} failed: {result.error}")
            return result, time.perf_counter() - started, published
        if time.monotonic() > deadline or ctx.worker.poll() is not None:
            raise RuntimeError(f"no result for job {job_id} within {timeout:g} s")
    raise RuntimeError("the result consumer stopped")


@contextmanager
def e2e_context(model: str, *, lane: bool = True, worker_env: dict | None = None) -> Iterator[E2EContext]:
    """Broker, worker and channel; stopped and removed afterwards, whatever happens. `lane`: with the
    interactive lane's queue (the default), else without it (everything on the jobs queue); `worker_env`:
    settings of the worker's beyond the bench's."""
    import pika

    from worker.devtools import local_broker
    from worker.service.publisher import declare

    broker_dir, work_dir = (
        Path(tempfile.mkdtemp(prefix="worker-rabbitmq-")),
        Path(tempfile.mkdtemp(prefix="bench-e2e-")),
    )
    broker = worker = connection = None
    try:
        with _quiet_pika():  # start() polls the port: every refused attempt is an ERROR line
            broker = local_broker.start(broker_dir)
        topology = _topology(lane)
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        declare(channel, topology)
        reply_to = channel.queue_declare("", exclusive=True).method.queue
        worker = start_worker(broker.url, work_dir, model, topology, worker_env)
        yield E2EContext(broker, worker, work_dir, channel, topology, reply_to)
    finally:
        if connection is not None and connection.is_open:
            connection.close()
        if worker is not None:
            stop_worker(worker)
        if broker is not None:
            broker.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)


@contextmanager
def _quiet_pika() -> Iterator[None]:
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pika_logger.setLevel(level)


def stop_worker(worker: subprocess.Popen) -> None:
    """SIGTERM (finish the job in flight, exit 0); killed if it has not exited within 60 s."""
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def overhead_clip(samples: np.ndarray) -> np.ndarray:
    """One second of speech: from the start of the first speech chunk."""
    chunks = split(samples)
    start = chunks[0].start if chunks else 0
    return samples[start : start + SAMPLE_RATE]


def measure_overhead(ctx: E2EContext, samples: np.ndarray, model: str, jobs: int) -> dict[str, Any]:
    """The fixed cost of a job around its transcription: `jobs` 1 s jobs, one after another."""
    write_wav(ctx.input_dir / "clip.wav", overhead_clip(samples))
    reported, outside = [], []
    for _ in range(jobs):
        result, e2e, _published = run_job(ctx, "clip.wav", model, timeout=120.0)
        t = result.timings
        reported.append((t.queue_wait_seconds or 0.0) + t.decode_seconds)
        outside.append(e2e - t.transcribe_seconds)
    return {
        "jobs": jobs,
        "median_queue_wait_plus_decode_seconds": round(statistics.median(reported), 3),
        "median_end_to_end_minus_transcribe_seconds": round(statistics.median(outside), 3),
    }


def row_e2e(recording: Recording, args: argparse.Namespace) -> tuple[RowResult, dict[str, Any]]:
    """Row 6: the long recording through the real worker, then the per-job overhead."""
    with e2e_context(args.model) as ctx:
        started = time.perf_counter()
        wait_until_consuming(ctx)
        load = time.perf_counter() - started
        write_wav(ctx.input_dir / "long.wav", recording.samples)
        cpu_before = proc_cpu_seconds(ctx.worker.pid)
        result, wall, _ = run_job(ctx, "long.wav", args.model, timeout=max(600.0, 3 * recording.seconds))
        cpu = proc_cpu_seconds(ctx.worker.pid) - cpu_before
        overhead = measure_overhead(ctx, recording.samples, args.model, args.overhead_jobs)
        peak = proc_status_mb(ctx.worker.pid, "VmHWM")
    details = {"chunks": result.chunks, "worker_timings": result.timings.model_dump(), "validations": None}
    return RowResult(
        "e2e", wall=wall, cpu=cpu, load=load, peak_rss_mb=peak, text=result.text or "", details=details
    ), overhead
