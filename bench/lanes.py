"""`--lanes`: a synchronous request behind a bulk backlog, with the interactive lane and without it.

Issue target: with one worker and 6 bulk jobs of 4 minutes queued, a 10 s synchronous request is answered
within its idle latency + 20 s, and the bulk jobs all complete.

Each run is a whole new set of processes (a private broker, one worker with its defaults but the model,
one gateway, all on 127.0.0.1), the variants alternating, `runs` times each; the minimum per variant is
reported. In a run: the request (JFK's 11 s, POST /v1/audio/transcriptions) twice on the idle service
(the idle latency: the second, warm one); then BULK_JOBS queue jobs of LJ Speech's 231 s put straight on
the jobs queue, and once the worker has taken the first, the same request again (the latency under the
backlog); then the time until every bulk job's result is back.
- `lane`: the defaults (the gateway sends synchronous requests to INTERACTIVE_QUEUE);
- `no lane`: INTERACTIVE_QUEUE="" for the worker and the gateway (everything on the jobs queue, as before).
"""

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import requests

from bench.common import ROOT
from bench.e2e import e2e_context, wait_until_consuming
from bench.gateway import _start_gateway
from worker.devtools.local_broker import free_port

BULK_JOBS = 6
BULK = "ljspeech_LJ001-0001_to_0032_concat.wav"  # 231 s
ASKED = "jfk_inaugural_1961.flac"  # 11 s
VARIANTS = ("lane", "no lane")
AUDIO = ROOT.parent / "shared" / "audio"


def _ask(url: str, model: str) -> float:
    started = time.perf_counter()
    with open(AUDIO / ASKED, "rb") as audio:
        response = requests.post(
            f"{url}/v1/audio/transcriptions", files={"file": audio}, data={"model": model}, timeout=3600
        )
    assert response.ok, f"{response.status_code}: {response.text}"
    assert "your country" in response.json()["text"].lower()
    return time.perf_counter() - started


def _backlog(ctx, model: str) -> list[str]:
    from worker.service.publisher import publish_job

    shutil.copyfile(AUDIO / BULK, ctx.input_dir / BULK)
    ids = [uuid.uuid4().hex for _ in range(BULK_JOBS)]
    for job_id in ids:
        body = json.dumps({"job_id": job_id, "audio": {"path": BULK}, "model": model}).encode()
        publish_job(ctx.channel, ctx.topology, body, job_id, reply_to=ctx.reply_to, published_at=time.time())
    return ids


def _taken(ctx, timeout: float = 120) -> None:
    """Until the worker holds the first bulk job (the jobs queue has one ready message fewer)."""
    deadline = time.monotonic() + timeout
    while ctx.channel.queue_declare(ctx.topology.jobs_queue, passive=True).method.message_count >= BULK_JOBS:
        assert time.monotonic() < deadline, "the worker took no bulk job"
        ctx.channel.connection.sleep(0.1)


def _results(ctx, ids: list[str], timeout: float = 3600) -> int:
    """Results back for `ids` (completed ones), waiting at most `timeout`."""
    waiting, completed = set(ids), 0
    deadline = time.monotonic() + timeout
    for _method, properties, body in ctx.channel.consume(ctx.reply_to, auto_ack=True, inactivity_timeout=1.0):
        if body is not None and properties.correlation_id in waiting:
            waiting.discard(properties.correlation_id)
            completed += json.loads(body)["status"] == "completed"
        if not waiting or time.monotonic() > deadline:
            break
    ctx.channel.cancel()
    return completed


def one_run(variant: str, model: str) -> dict[str, float]:
    port = free_port()  # the worker fetches uploads from exactly the gateway's origin
    with (
        e2e_context(model, lane=variant == "lane", worker_env={"GATEWAY_PORT": str(port)}) as ctx,
        tempfile.TemporaryDirectory(prefix="bench-lanes-") as d,
    ):
        wait_until_consuming(ctx)
        gateway = _start_gateway(ctx, port, Path(d))
        url = f"http://127.0.0.1:{port}"
        try:
            idle = min(_ask(url, model) for _ in range(2))
            started = time.perf_counter()
            ids = _backlog(ctx, model)
            _taken(ctx)
            behind = _ask(url, model)
            completed = _results(ctx, ids)
            backlog = time.perf_counter() - started
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    return {"idle": idle, "behind": behind, "backlog": backlog, "completed": completed}


def run_lanes(model: str, runs: int = 2) -> str:
    found: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for run in range(runs):
        for variant in VARIANTS if run % 2 == 0 else VARIANTS[::-1]:
            found[variant].append(one_run(variant, model))
    lines = [
        f"One worker ({model}), {BULK_JOBS} bulk jobs of {BULK} (231 s) queued, then {ASKED} (11 s) posted to "
        f"/v1/audio/transcriptions; min of {runs} alternating runs (each its own broker, worker, gateway):",
        "",
        "| variant | idle latency s | latency behind the backlog s | over idle s | backlog done s | bulk completed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant, rows in found.items():
        idle, behind = min(r["idle"] for r in rows), min(r["behind"] for r in rows)
        backlog, completed = min(r["backlog"] for r in rows), min(r["completed"] for r in rows)
        lines.append(
            f"| {variant} | {idle:.2f} | {behind:.2f} | {behind - idle:+.2f} | {backlog:.1f} | {completed:.0f}/{BULK_JOBS} |"
        )
    lines += ["", "Each run: " + "; ".join(f"{v}: {[{k: round(x, 2) for k, x in r.items()} for r in rs]}"
                                           for v, rs in found.items())]  # fmt: skip
    return "\n".join(lines)
