"""Benchmark of the HTTP server every gridloop service runs: what the limits of http_server cost.

The same small Starlette endpoint (read a JSON body, answer 202) is served three ways, each in its own
process pinned to core 0: uvicorn's httptools protocol as it comes (what gridloop ran before the limits),
gridloop's guarded httptools protocol (serve_http: header limit, read deadlines, connection cap), and
uvicorn's h11 protocol with its header limit (the alternative that was not chosen). A keep-alive client
on the other core sends a fixed number of POSTs over 32 connections; rounds are interleaved. The figure
that matters is the server's CPU per request (steadier than requests per second on a shared box).

Traffic goes to 127.0.0.1 only and is bounded in count. Figures are printed and written to
bench/results/http_server.json. Run: `uv run python bench/http_server.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from commands import BIN, cpu_seconds, pinned, wait_for_port
from infrastructure import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "http_server.json"
CONNECTIONS = 32
REQUESTS_PER_ROUND = 20_000
ROUNDS = 3
BODY = json.dumps({"event_type": "event.bench", "event_object": {"id": "bench"}}).encode()

SERVER = """
import asyncio, json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from gridloop_common.observability.http_server import server_config
from gridloop_common.settings import HttpServerSettings

async def receive(request):
    payload = json.loads(await request.body())
    return JSONResponse({"status": "accepted", "event_type": payload["event_type"]}, status_code=202)

app = Starlette(routes=[Route("/v1/webhooks", receive, methods=["POST"])])
variant, port = sys.argv[1], int(sys.argv[2])
common = dict(host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")
if variant == "guarded_httptools":
    config = server_config(app, host="127.0.0.1", port=port, settings=HttpServerSettings.model_construct())
elif variant == "h11":
    config = uvicorn.Config(app, http="h11", h11_max_incomplete_event_size=32768, **common)
else:
    config = uvicorn.Config(app, http="httptools", **common)
uvicorn.Server(config).run()
"""

VARIANTS = ("httptools", "guarded_httptools", "h11")


async def load(port: int, requests: int) -> float:
    """Send ``requests`` POSTs over CONNECTIONS keep-alive connections; returns the wall seconds taken."""
    head = (
        f"POST /v1/webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    request = head + BODY

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(count):
                writer.write(request)
                status = (await reader.readline()).split()[1]
                assert status == b"202", status
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(requests // CONNECTIONS) for _ in range(CONNECTIONS)))
    return time.perf_counter() - started


async def main() -> None:
    ports = {variant: free_port() for variant in VARIANTS}
    servers = {
        variant: subprocess.Popen(pinned([str(BIN / "python"), "-c", SERVER, variant, str(port)], core=0))
        for variant, port in ports.items()
    }
    rows: list[dict[str, Any]] = []
    try:
        for port in ports.values():
            await wait_for_port(port)
        for port in ports.values():  # warm-up
            await load(port, 2_000)
        requests = REQUESTS_PER_ROUND // CONNECTIONS * CONNECTIONS
        for round_number in range(ROUNDS):
            for variant, port in ports.items():
                cpu_before = cpu_seconds(servers[variant].pid)
                seconds = await load(port, requests)
                cpu_us = (cpu_seconds(servers[variant].pid) - cpu_before) / requests * 1e6
                rows.append({"variant": variant, "round": round_number, "rps": requests / seconds, "cpu_us": cpu_us})
                print(
                    f"  {variant:18s} round {round_number}: {requests / seconds:7.0f} rps  "
                    f"server CPU {cpu_us:5.0f} us/request"
                )
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(10)
    summary = {
        variant: {
            "median_rps": statistics.median(row["rps"] for row in rows if row["variant"] == variant),
            "median_cpu_us_per_request": statistics.median(row["cpu_us"] for row in rows if row["variant"] == variant),
        }
        for variant in VARIANTS
    }
    for variant, figures in summary.items():
        print(
            f"{variant:18s} median {figures['median_rps']:7.0f} rps, "
            f"{figures['median_cpu_us_per_request']:5.0f} us of server CPU per request"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
                "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "connections": CONNECTIONS,
                "requests_per_round": requests,
                "rounds": rows,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
