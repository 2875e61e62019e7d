"""`--gateway`: what the HTTP gateway adds to a job, against enqueueing it directly (127.0.0.1 only).

One private broker, one worker (defaults), one `cmd/gateway/main.py`. Rows alternate, `runs` times:
- a 1 s clip, `jobs` times in a row: enqueued directly as a path job (the worker reads INPUT_DIR),
  and posted to /v1/audio/transcriptions (the worker downloads the upload from the gateway);
- the >= 12-minute recording once each way.
Per-request overhead = gateway latency - direct latency (medians, the minimum over runs). Upload
throughput = the recording's bytes / the time POST /v1/jobs takes to take it (spool, store, publish).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import ROOT, Recording
from bench.e2e import e2e_context, overhead_clip, run_job, wait_until_consuming
from worker.devtools.local_broker import free_port
from worker.devtools.topology_env import topology_env
from worker.media.audio import write_wav


def _start_gateway(ctx, port: int, scratch: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        **topology_env(ctx.topology),
        "ENV_FILE": "",  # no developer's .env in a measurement
        "AMQP_URL": ctx.broker.url,
        "GATEWAY_PORT": str(port),
        "GATEWAY_UPLOAD_DIR": str(scratch / "uploads"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{scratch / 'jobs.sqlite3'}",
        "GATEWAY_METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }
    log = open(scratch / "gateway.log", "wb")
    process = subprocess.Popen([sys.executable, "cmd/gateway/main.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                return process
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start: {(scratch / 'gateway.log').read_text()[-2000:]}")
        time.sleep(0.2)


def _via_gateway(url: str, path: Path, model: str) -> tuple[float, str]:
    started = time.perf_counter()
    with open(path, "rb") as audio:
        response = requests.post(
            f"{url}/v1/audio/transcriptions", files={"file": audio}, data={"model": model}, timeout=3600
        )
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["text"]


def _upload_seconds(url: str, path: Path, model: str) -> float:
    started = time.perf_counter()
    with open(path, "rb") as audio:
        response = requests.post(f"{url}/v1/jobs", files={"file": audio}, data={"model": model}, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started


def run_gateway(recording: Recording, model: str, runs: int, jobs: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {"clip direct": [], "clip gateway": [], "long direct": [], "long gateway": []}
    uploads: list[float] = []
    with e2e_context(model) as ctx, tempfile.TemporaryDirectory(prefix="bench-gateway-") as scratch:
        wait_until_consuming(ctx)
        port = free_port()
        gateway = _start_gateway(ctx, port, Path(scratch))
        url = f"http://127.0.0.1:{port}"
        try:
            write_wav(ctx.input_dir / "clip.wav", overhead_clip(recording.samples))
            write_wav(ctx.input_dir / "long.wav", recording.samples)
            for _ in range(runs):
                rows["clip direct"].append(
                    statistics.median(run_job(ctx, "clip.wav", model, timeout=120)[1] for _ in range(jobs))
                )
                rows["clip gateway"].append(
                    statistics.median(_via_gateway(url, ctx.input_dir / "clip.wav", model)[0] for _ in range(jobs))
                )
                rows["long direct"].append(run_job(ctx, "long.wav", model, timeout=3600)[1])
                rows["long gateway"].append(_via_gateway(url, ctx.input_dir / "long.wav", model)[0])
            uploads = [_upload_seconds(url, ctx.input_dir / "long.wav", model) for _ in range(runs)]
            size = (ctx.input_dir / "long.wav").stat().st_size
            time.sleep(1)  # the async jobs above are left to the worker; the bench ends with the context
        finally:
            gateway.terminate()
            gateway.wait(30)
    best = {name: min(values) for name, values in rows.items()}
    return {"runs": runs, "jobs": jobs, "seconds": recording.seconds, "model": model, "best": best, "all": rows,
            "upload_bytes": size, "upload_seconds": min(uploads)}  # fmt: skip


def gateway_markdown(report: dict[str, Any]) -> str:
    best = report["best"]
    minutes = report["seconds"] / 60
    clip = best["clip gateway"] - best["clip direct"]
    long = best["long gateway"] - best["long direct"]
    mbps = report["upload_bytes"] / report["upload_seconds"] / 1e6
    lines = [
        f"\n## Gateway overhead ({report['model']}, min over {report['runs']} alternating runs)\n",
        "| row | latency | every run |",
        "|---|---|---|",
        *(f"| {name} | {best[name]:.3f} s | {', '.join(f'{v:.3f}' for v in report['all'][name])} |" for name in best),
        "",
        f"- 1 s clip (median of {report['jobs']} in a row): the gateway adds **{1000 * clip:.0f} ms** per request"
        " (goal < 50 ms): multipart upload, spool and store, the worker's download from the gateway instead of"
        " a read from INPUT_DIR, the reply",
        f"- {minutes:.1f}-minute recording: the gateway adds {long:.2f} s to {best['long direct']:.1f} s"
        f" ({100 * long / best['long direct']:+.1f}%)",
        f"- upload throughput: {report['upload_bytes'] / 1e6:.1f} MB taken by POST /v1/jobs in"
        f" {report['upload_seconds']:.2f} s = {mbps:.0f} MB/s, against {report['upload_bytes'] / 1e6 / best['long direct']:.2f} MB/s"
        " of audio transcribed",
    ]
    return "\n".join(lines) + "\n"
