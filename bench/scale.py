"""`--scale`: one long job across worker processes pinned to cores, and peak memory against length.

Scale-out rows, each a fresh set of `cmd/consumer/main.py` processes on one private broker (only
127.0.0.1), every worker pinned with `taskset` to a core of its own, one whisper call of one thread:

    in-process, 1 worker   FANOUT_MIN_SECONDS=0: today's path, the reference for fan-out's cost
    fan-out, 1 worker      the same worker, its chunks going through the broker and back
    fan-out, 2 workers     two workers on two cores

Latency is publish -> result. The rows alternate, `runs` times; the minimum is kept. From the fan-out
1-worker run: the serial part S (everything but chunk transcription: decode, split, scatter, gather,
publish) and the measured chunk times give the model T(N) = S + makespan of the chunks over N
workers taken in queue order (FIFO), whose speedups for 4, 16 and 64 workers are printed.

Memory rows: `cmd/transcribe/main.py` on recordings of 10, 60 and 240 minutes (the benchmark's
speech repeated), peak RSS from the kernel (wait4's ru_maxrss).
"""

import heapq
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import MODELS_DIR, ROOT, Recording
from bench.e2e import _quiet_pika
from worker.media.audio import SAMPLE_RATE

SCALE_ROWS = {
    "in-process, 1 worker": {"cores": [0], "fanout": 0},
    "fan-out, 1 worker": {"cores": [0], "fanout": 60},
    "fan-out, 2 workers": {"cores": [0, 1], "fanout": 60},
}
PREDICT_FOR = (2, 4, 16, 64)
_PUBLISHED = re.compile(r"Published (\d+) chunk tasks \(([\d.]+) MB of FLAC\) in ([\d.]+) s")
_GATHERED = re.compile(r"Gathered (\d+) chunk results \(([\d.]+) kB received\)")
_BACK = re.compile(r"Chunk (\d+) back from \S+ \(([\d.]+) s\)")


def write_recording_wav(path: Path, recording: Recording, minutes: float | None = None) -> float:
    """The recording as a 16-bit WAV, repeated (streamed, never all in memory) to `minutes`; its seconds."""
    pcm = np.clip(np.round(recording.samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
    total = len(pcm) // 2 if minutes is None else int(minutes * 60 * SAMPLE_RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        written = 0
        while written < total:
            piece = pcm[: 2 * (total - written)]
            out.writeframes(piece)
            written += len(piece) // 2
    return total / SAMPLE_RATE


def _topology(tag: str):
    from worker.service.publisher import Topology

    return Topology(
        jobs_queue=f"scale.{tag}.jobs",
        results_queue=f"scale.{tag}.results",
        dead_letter_exchange=f"scale.{tag}.dlx",
        dead_letter_queue=f"scale.{tag}.dead",
        progress_exchange=f"scale.{tag}.progress",
        delivery_limit=5,
        chunks_queue=f"scale.{tag}.chunks",
        chunks_dead_letter_queue=f"scale.{tag}.chunks.dead",
        interactive_queue=f"scale.{tag}.interactive",
    )


def _start(url: str, work: Path, index: int, core: int, fanout: float, model: str, topology) -> subprocess.Popen:
    from worker.devtools.topology_env import topology_env

    env = {
        **os.environ,
        **topology_env(topology),
        "ENV_FILE": "",  # no developer's .env in a measurement
        "AMQP_URL": url,
        "INPUT_DIR": str(work / "input"),
        "OUTPUT_DIR": str(work / "output"),
        "WORK_DIR": str(work / f"scratch-{index}"),
        "WHISPER_DOWNLOAD_URL": "",
        "WHISPER_MODELS_DIR": str(MODELS_DIR),
        "WHISPER_MODEL": model,
        "METRICS_PORT": "0",
        "MAX_PARALLEL_WORKERS": "1",
        "WHISPER_THREADS": "1",
        "FANOUT_MIN_SECONDS": str(fanout),
        "LOG_LEVEL": "DEBUG",
    }
    log = open(work / f"worker-{index}.log", "wb")
    command = ["taskset", "-c", str(core), sys.executable, "cmd/consumer/main.py"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_scale_row(url: str, work: Path, row: dict, model: str) -> dict[str, Any]:
    """One job through the row's workers: latency, and what the coordinator's log says of fan-out."""
    import pika

    from worker.messages import Job, Result
    from worker.service.publisher import declare, publish_job

    topology = _topology(uuid.uuid4().hex[:8])
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    declare(channel, topology)
    reply_to = channel.queue_declare("", exclusive=True).method.queue
    workers = [_start(url, work, i, core, row["fanout"], model, topology) for i, core in enumerate(row["cores"])]
    try:
        while channel.queue_declare(topology.jobs_queue, passive=True).method.consumer_count < len(workers):
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker exited: see {work}")
            connection.sleep(0.2)
        job_id = uuid.uuid4().hex
        job = Job.model_validate({"job_id": job_id, "audio": {"path": "long.wav"}, "model": model})
        started = time.perf_counter()
        publish_job(channel, topology, job.model_dump_json(exclude_none=True).encode(), job_id, reply_to=reply_to)
        for _method, _properties, body in channel.consume(reply_to, auto_ack=True, inactivity_timeout=1.0):
            if body is not None:
                latency = time.perf_counter() - started
                result = Result.model_validate_json(body)
                break
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker exited: see {work}")
        channel.cancel()
        if result.status != "completed":
            raise RuntimeError(f"the job failed: {result.error}")
    finally:
        peaks = [_stop_and_peak_mb(worker) for worker in workers]
        connection.close()
    logs = [(work / f"worker-{i}.log").read_text(errors="replace") for i in range(len(workers))]
    coordinator = next((i for i, log in enumerate(logs) if "Fanning out" in log or "Processing job" in log), 0)
    logs = "".join(logs)
    published, gathered = _PUBLISHED.search(logs), _GATHERED.search(logs)
    return {
        "coordinator_peak_rss_mb": peaks[coordinator],
        "latency_seconds": latency,
        "decode_seconds": result.timings.decode_seconds,
        "chunks": result.chunks,
        "text": result.text,
        "flac_bytes": round(float(published.group(2)) * 1e6) if published else 0,
        "scatter_seconds": float(published.group(3)) if published else 0.0,
        "gather_bytes": round(float(gathered.group(2)) * 1e3) if gathered else 0,
        "chunk_seconds": [float(s) for _i, s in sorted(_BACK.findall(logs), key=lambda m: int(m[0]))],
    }


def _stop_and_peak_mb(worker: subprocess.Popen) -> float:
    """SIGTERM the worker (killed after 60 s) and return its peak RSS from the kernel's accounting."""
    if worker.poll() is not None:
        return 0.0
    worker.terminate()
    deadline = time.monotonic() + 60
    while True:
        pid, status, usage = os.wait4(worker.pid, os.WNOHANG)
        if pid:
            worker.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss / 1024
        if time.monotonic() > deadline:
            worker.kill()
        time.sleep(0.1)


def makespan(durations: list[float], workers: int) -> float:
    """When the last of `durations` ends, each task going in order to the worker free first (FIFO queue)."""
    free_at = [0.0] * workers
    for duration in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + duration)
    return max(free_at)


def scale_model(fanout_one: dict[str, Any]) -> dict[str, Any]:
    chunk_seconds = fanout_one["chunk_seconds"]
    total = fanout_one["latency_seconds"]
    serial = max(0.0, total - sum(chunk_seconds))
    predicted = {n: total / (serial + makespan(chunk_seconds, n)) for n in PREDICT_FOR}
    return {
        "serial_seconds": serial,
        "parallel_seconds": sum(chunk_seconds),
        "longest_chunk_seconds": max(chunk_seconds, default=0.0),
        "predicted_speedup": predicted,
    }


def run_scale(recording: Recording, model: str, runs: int) -> dict[str, Any]:
    from worker.devtools import local_broker

    broker_dir, work = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-")), Path(tempfile.mkdtemp(prefix="bench-scale-"))
    (work / "input").mkdir()
    seconds = write_recording_wav(work / "input" / "long.wav", recording)
    broker = None
    try:
        with _quiet_pika():
            broker = local_broker.start(broker_dir)
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in SCALE_ROWS}
        for run in range(runs):
            for name, row in SCALE_ROWS.items():  # alternating: every row once per run
                result = run_scale_row(broker.url, work, row, model)
                print(f"  run {run + 1}, {name}: {result['latency_seconds']:.1f} s", file=sys.stderr)
                measured[name].append(result)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    best = {name: min(results, key=lambda r: r["latency_seconds"]) for name, results in measured.items()}
    return {"audio_seconds": seconds, "runs": runs, "model": model, "best": best, "all": measured}


def scale_markdown(report: dict[str, Any]) -> str:
    best = report["best"]
    minutes = report["audio_seconds"] / 60
    inproc, one, two = (best[name] for name in SCALE_ROWS)
    texts_equal = len({r["text"] for r in best.values()}) == 1
    lines = [
        f"\n## Scale-out: one {minutes:.1f}-minute job, {report['model']}, min of {report['runs']} alternating runs\n",
        "| row | latency | chunks | all latencies |",
        "|---|---|---|---|",
    ]
    for name, result in best.items():
        every = ", ".join(f"{r['latency_seconds']:.1f}" for r in report["all"][name])
        lines.append(
            f"| {name} (taskset, 1 thread each) | {result['latency_seconds']:.1f} s | {result['chunks']} | {every} |"
        )
    model = scale_model(one)
    moved = (one["flac_bytes"] + one["gather_bytes"]) / minutes
    lines += [
        "",
        f"- speedup, 2 workers vs 1 (both fan-out): **{one['latency_seconds'] / two['latency_seconds']:.2f}x**"
        f" (goal >= 1.8x); vs in-process on 1 worker: {inproc['latency_seconds'] / two['latency_seconds']:.2f}x",
        f"- cost of fan-out on 1 worker: **{100 * (one['latency_seconds'] / inproc['latency_seconds'] - 1):+.1f}%**"
        " (goal <= 5%)",
        f"- bytes over the broker per audio minute: {moved / 1e6:.2f} MB (chunk FLAC {one['flac_bytes'] / 1e6:.1f} MB,"
        f" results {one['gather_bytes'] / 1e3:.0f} kB, for {minutes:.1f} min); raw 16-bit PCM would be 1.92 MB",
        f"- same text in all three rows: {texts_equal}",
        f"- model from the fan-out 1-worker run: serial part S = latency - chunk times = {model['serial_seconds']:.1f} s"
        f" (decode {one['decode_seconds']:.1f} s; the scatter, {one['scatter_seconds']:.2f} s, overlaps the first"
        f" chunks), chunks {model['parallel_seconds']:.1f} s in all, longest {model['longest_chunk_seconds']:.1f} s;"
        f" chunk times summed over the 2-worker run: {sum(two['chunk_seconds']):.1f} s (the same chunks,"
        " two processes sharing caches, memory bandwidth and the unpinned broker)",
        "- predicted speedup: "
        + ", ".join(f"{n} workers {s:.1f}x" for n, s in model["predicted_speedup"].items())
        + f" (measured for 2: {one['latency_seconds'] / two['latency_seconds']:.2f}x)",
    ]
    return "\n".join(lines) + "\n"


def peak_rss_mb(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit code) of a child process, from the kernel's accounting."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(child.pid, 0)
    return usage.ru_maxrss / 1024, time.perf_counter() - started, os.waitstatus_to_exitcode(status)


def run_memory(recording: Recording, model: str, minutes: list[float]) -> list[dict[str, Any]]:
    """cmd/transcribe on recordings of each length; one process each, longest last."""
    rows = []
    env = {**os.environ, "WHISPER_MODELS_DIR": str(MODELS_DIR), "WHISPER_DOWNLOAD_URL": "", "LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        for length in minutes:
            path = Path(scratch) / f"{length:g}min.wav"
            seconds = write_recording_wav(path, recording, length)
            rss, wall, code = peak_rss_mb([sys.executable, "cmd/transcribe/main.py", str(path), "--model", model], env)
            path.unlink()
            if code != 0:
                raise RuntimeError(f"cmd/transcribe failed on {length:g} min ({code})")
            rows.append({"minutes": length, "audio_seconds": seconds, "peak_rss_mb": rss, "wall_seconds": wall})
            print(f"  {length:g} min: peak RSS {rss:.0f} MB in {wall:.0f} s", file=sys.stderr)
    return rows


def run_memory_fanout(recording: Recording, model: str, minutes: list[float]) -> list[dict[str, Any]]:
    """A fanned-out job of each length over two pinned workers; the coordinator's peak RSS."""
    from worker.devtools import local_broker

    broker_dir, work = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-")), Path(tempfile.mkdtemp(prefix="bench-mem-"))
    (work / "input").mkdir()
    rows, broker = [], None
    try:
        with _quiet_pika():
            broker = local_broker.start(broker_dir)
        for length in minutes:
            seconds = write_recording_wav(work / "input" / "long.wav", recording, length)
            started = time.perf_counter()
            result = run_scale_row(broker.url, work, SCALE_ROWS["fan-out, 2 workers"], model)
            rss = result["coordinator_peak_rss_mb"]
            rows.append(
                {
                    "minutes": length,
                    "audio_seconds": seconds,
                    "peak_rss_mb": rss,
                    "wall_seconds": time.perf_counter() - started,
                }
            )
            print(f"  fan-out {length:g} min: coordinator peak RSS {rss:.0f} MB", file=sys.stderr)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def memory_markdown(rows: list[dict[str, Any]], model: str, what: str = "cmd/transcribe, defaults") -> str:
    first = rows[0]["peak_rss_mb"]
    lines = [
        f"\n## Peak memory against recording length ({what}, {model})\n",
        "| audio | peak RSS | vs the shortest | wall |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['minutes']:g} min | {row['peak_rss_mb']:.0f} MB | {row['peak_rss_mb'] - first:+.0f} MB"
            f" | {row['wall_seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"
