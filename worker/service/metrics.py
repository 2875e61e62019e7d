"""Prometheus metrics and the /healthz + /metrics HTTP endpoint."""

import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

from worker.service.chunks import ChunkOutcome
from worker.service.outcome import Outcome

JOBS = Counter("transcription_jobs_total", "Jobs settled, by outcome", ["status"])
JOB_SECONDS = Histogram(
    "transcription_job_seconds", "Wall time of completed jobs", buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
)
REAL_TIME_FACTOR = Histogram(
    "transcription_real_time_factor",
    "Transcription seconds per audio second",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5),
)
CHUNKS = Histogram("transcription_chunks", "Chunks per completed job", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ERRORS = Counter("transcription_job_errors_total", "Failed or retried job attempts, by error code", ["code"])
CALLBACK_FAILURES = Counter(
    "transcription_callback_failures_total", "Completed jobs whose callback URL did not accept the result"
)
TENANT_JOBS = Counter(
    "transcription_tenant_jobs_total",
    "Jobs completed or failed for good, by the job's tenant (none: unnamed)",
    ["tenant", "status"],
)
TENANT_AUDIO_SECONDS = Counter(
    "transcription_tenant_audio_seconds_total", "Seconds of audio in completed jobs, by the job's tenant", ["tenant"]
)
IN_FLIGHT = Gauge("transcription_jobs_in_flight", "Jobs being processed now")
BROKER_CONNECTS = Gauge(
    "transcription_broker_connects", "Connections made to the broker since start (over 1: reconnected)"
)

CHUNK_TASKS = Counter(
    "transcription_chunk_tasks_total",
    "Chunk tasks of fanned-out jobs settled by this worker: completed, failed (dead-lettered), orphaned (job ended)",
    ["status"],
)
CHUNK_REDELIVERED = Counter(
    "transcription_chunk_tasks_redelivered_total", "Chunk tasks this worker received again (a worker stopped on them)"
)
QUEUE_DEPTH = Gauge(
    "transcription_queue_depth", "Messages ready on the jobs and chunk queues (sampled every 5 s)", ["queue"]
)


def record_chunk(outcome: ChunkOutcome) -> None:
    """Count a settled chunk task (on the connection thread)."""
    status = {"reply": "completed", "dead_letter": "failed", "drop": "orphaned"}[outcome.action]
    CHUNK_TASKS.labels(status=status).inc()
    if outcome.attempt > 1:
        CHUNK_REDELIVERED.inc()
    if outcome.error is not None:
        ERRORS.labels(code=outcome.error.code).inc()


def watch_queue_depths(depths: dict[str, int], queues: list[str]) -> None:
    """Export the consumer's sampled queue depths."""
    for queue in queues:
        QUEUE_DEPTH.labels(queue=queue).set_function(lambda queue=queue: depths.get(queue, 0))


def record(outcome: Outcome) -> None:
    """Count a settled job (called on the connection thread after the broker took the result)."""
    status = {"complete": "completed", "dead_letter": "failed", "retry": "retried", "ack": "duplicate"}[outcome.action]
    JOBS.labels(status=status).inc()
    result = outcome.result
    if outcome.error is not None:
        ERRORS.labels(code=outcome.error.code).inc()
    if result is not None and result.warnings:
        CALLBACK_FAILURES.inc()
    if outcome.action in ("complete", "dead_letter") and result is not None:
        TENANT_JOBS.labels(tenant=result.tenant or "none", status=result.status).inc()
    if outcome.action == "complete" and result is not None:
        TENANT_AUDIO_SECONDS.labels(tenant=result.tenant or "none").inc(result.duration_seconds or 0.0)
        JOB_SECONDS.observe(result.timings.total_seconds)
        if result.timings.real_time_factor is not None:
            REAL_TIME_FACTOR.observe(result.timings.real_time_factor)
        CHUNKS.observe(result.chunks or 0)


def serve(port: int, healthy: Callable[[], bool], *, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve /metrics (Prometheus text) and /healthz (200 when `healthy()`, else 503) on a daemon thread.

    Listens on `host` only: loopback unless told otherwise (0.0.0.0 where probes or Prometheus come from
    outside the container). OSError when the address cannot be bound.
    """

    class Handler(MetricsHandler):
        registry = REGISTRY

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/healthz":
                ok = healthy()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok\n" if ok else b"broker not connected\n")
                return
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
