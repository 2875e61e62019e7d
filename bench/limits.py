"""`--limits`: what the gateway's per-tenant checks cost a request (issue target: under 2 ms).

Each variant runs in its own process (this file with `--child VARIANT`), alternating, `runs` times each;
the minimum per variant is reported. A child builds the gateway's request edge around a bare route (no
broker, no whisper) on a fresh SQLite job database in a temporary directory, and times REQUESTS GET
requests over one keep-alive connection to it, served by uvicorn on 127.0.0.1 in the same process:
- `bare`: the edge and the route only;
- `counted`: + the rate limit layer (worker/gateway/limits.py), counting every request in the database,
  for a tenant with `requests_per_minute` (its headers added);
- `quota`: + the route reading the tenant's audio used today (worker/gateway/usage.py), as a tenant with
  `audio_seconds_per_day` costs every transcription request.
"""

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REQUESTS = 500
VARIANTS = ("bare", "counted", "quota")


def child(variant: str) -> float:
    """Milliseconds per request of `variant`, in this process."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from worker.gateway.edge import EdgeOptions, RequestEdge
    from worker.gateway.limits import RateLimit
    from worker.gateway.store import JobStore
    from worker.gateway.tenants import Tenants
    from worker.gateway.usage import UsageBook, today

    with tempfile.TemporaryDirectory(prefix="bench-limits-") as scratch:
        usage = UsageBook(JobStore(f"sqlite:///{scratch}/jobs.sqlite3").engine)
        keys = Tenants(frozenset({"bench-key"}), None)
        tenant = keys.table.tenant(b"bench-key")

        async def route(request):
            if variant == "quota":
                await asyncio.to_thread(usage.audio_seconds, request.state.tenant, today())
            return JSONResponse({"ok": True})

        app = Starlette(routes=[Route("/v1/models", route)])
        inner = RateLimit(app, lambda: {tenant: 10**9}, usage.count_request) if variant != "bare" else app
        edge = RequestEdge(inner, EdgeOptions(keys=keys, max_upload_bytes=1 << 20, idle_seconds=30.0))
        return _timed(edge)


def _timed(edge) -> float:
    import requests
    import uvicorn

    from worker.devtools.local_broker import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(edge, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url, headers = f"http://127.0.0.1:{port}/v1/models", {"Authorization": "Bearer bench-key"}
    try:
        with requests.Session() as session:
            for _ in range(20):  # warm: the first connection, to the server and to the database
                assert session.get(url, headers=headers, timeout=10).status_code == 200
            started = time.perf_counter()
            for _ in range(REQUESTS):
                session.get(url, headers=headers, timeout=10)
            return (time.perf_counter() - started) / REQUESTS * 1000
    finally:
        server.should_exit = True
        thread.join()


def run_limits(runs: int = 3) -> str:
    """Markdown: each variant's min of `runs` alternating child processes, and the cost over `bare`."""
    found: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for run in range(runs):
        for variant in VARIANTS if run % 2 == 0 else VARIANTS[::-1]:
            out = subprocess.run([sys.executable, "-m", "bench.limits", "--child", variant], capture_output=True,
                                 text=True, check=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
            found[variant].append(float(out.stdout.split()[-1]))
    bare = min(found["bare"])
    lines = [
        f"Per-tenant checks, {REQUESTS} requests per process, min of {runs} alternating processes each:",
        "",
        "| variant | ms per request | cost over bare |",
        "|---|---:|---:|",
    ]
    lines += [f"| {v} | {min(t):.2f} | {min(t) - bare:+.2f} ms |" for v, t in found.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{child(args.child):.4f}" if args.child else run_limits(args.runs))
