"""Benchmark of POST /calculate_mpc for one site through the real gateway and the real optimizer.

Issue 17 asks for `POST /calculate_mpc` for one site at p99 under 100 ms through the gateway. Both services
run as processes (the gateway pinned to core 0, the optimizer to core 1) on a private vhost and database;
the site has one battery (10 kWh, 5 kW) with a SoC reading and no telemetry history (the forecast falls back).
Each request starts, or replaces, the MPC of that site: the optimizer reads the registry, the SoC and the
forecast inputs, stores a run, solves 12 ten-minute steps, stores the plan and publishes it (confirmed; the
plans go to the scheduler's queue, which nobody consumes here), then answers with the first plan. One
keep-alive client sends requests one after another after a warm-up. Printed, and written to
bench/results/planning_endpoints.json.

Run: `uv run python bench/planning_endpoints.py`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from commands import BIN, bench_infrastructure, cpu_seconds, percentile, pinned, process
from infrastructure import free_port

from gridloop_common.auth import issue_key

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "planning_endpoints.json"
WARM_UP = 30
REQUESTS = 300
STEPS = 12


def _body(now: datetime) -> bytes:
    start = now.replace(minute=now.minute - now.minute % 10, second=0, microsecond=0) + timedelta(minutes=10)
    steps = [(start + timedelta(minutes=10 * step)).isoformat() for step in range(STEPS)]
    return json.dumps(
        {
            "site": "bench-site",
            "prices": {at: 0.07 if index < 4 else 0.15 for index, at in enumerate(steps)},
            "power_limit": {at: 7.0 if index < 4 else 15.0 for index, at in enumerate(steps)},
            "interval": 10,
            "start": steps[0],
            "stop": (start + timedelta(minutes=10 * STEPS)).isoformat(),
        }
    ).encode()


async def _register_site(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("INSERT INTO flux.mg_sites (name, timezone) VALUES ('bench-site', 'UTC')")
        device_id = await connection.fetchval(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata)"
            " VALUES ('bench-battery', 'bess', 'bench-site', '{\"capacity_kwh\": 10, \"max_power_kw\": 5}')"
            " RETURNING id"
        )
        await connection.execute(
            "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES (now(), $1, 50, 0)",
            device_id,
        )
    finally:
        await connection.close()


async def measure() -> dict[str, Any]:
    async with bench_infrastructure() as infrastructure:
        gateway_port, optimizer_port = free_port(), free_port()
        environment = infrastructure.environment(
            GRIDLOOP_GATEWAY_PORT=str(gateway_port), GRIDLOOP_OPTIMIZER_PORT=str(optimizer_port)
        )
        subprocess.run([str(BIN / "gridloop-ingest"), "migrate"], env=environment, check=True, capture_output=True)
        subprocess.run([str(BIN / "gridloop-optimizer"), "migrate"], env=environment, check=True, capture_output=True)
        await _register_site(infrastructure.database_url)
        key = issue_key(environment["GRIDLOOP_JWT_SECRET"], "grid_operator")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with (
            process(
                pinned([str(BIN / "gridloop-optimizer")], core=1),
                environment,
                ready_url=f"http://127.0.0.1:{optimizer_port}/readyz",
            ) as optimizer_pid,
            process(
                pinned([str(BIN / "gridloop-gateway")], core=0),
                environment,
                ready_url=f"http://127.0.0.1:{gateway_port}/readyz",
            ) as gateway_pid,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_port}", timeout=30.0) as client,
        ):
            body = _body(datetime.now(tz=UTC))
            for _ in range(WARM_UP):
                response = await client.post("/calculate_mpc", content=body, headers=headers)
                assert response.status_code == 200, response.text
            assert response.json()["state"] == "optimal", response.text
            latencies_ms: list[float] = []
            cpu_before = cpu_seconds(gateway_pid), cpu_seconds(optimizer_pid)
            started = time.perf_counter()
            for _ in range(REQUESTS):
                sent = time.perf_counter()
                response = await client.post("/calculate_mpc", content=body, headers=headers)
                latencies_ms.append((time.perf_counter() - sent) * 1000)
                assert response.status_code == 200, response.text
            elapsed = time.perf_counter() - started
            gateway_cpu_ms = (cpu_seconds(gateway_pid) - cpu_before[0]) / REQUESTS * 1e3
            optimizer_cpu_ms = (cpu_seconds(optimizer_pid) - cpu_before[1]) / REQUESTS * 1e3
    return {
        "measured_at": datetime.now(tz=UTC).isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "requests": REQUESTS,
        "steps": STEPS,
        "p50_ms": statistics.median(latencies_ms),
        "p90_ms": percentile(latencies_ms, 0.90),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": max(latencies_ms),
        "requests_per_second": REQUESTS / elapsed,
        "gateway_cpu_ms_per_request": gateway_cpu_ms,
        "optimizer_cpu_ms_per_request": optimizer_cpu_ms,
    }


def main() -> None:
    results = asyncio.run(measure())
    print(
        f"POST /calculate_mpc, one site and one battery, {STEPS} steps, through the real gateway and optimizer "
        f"({results['requests']} sequential requests): p50 {results['p50_ms']:.1f} ms  "
        f"p90 {results['p90_ms']:.1f} ms  p99 {results['p99_ms']:.1f} ms  max {results['max_ms']:.1f} ms  "
        f"CPU per request: gateway {results['gateway_cpu_ms_per_request']:.2f} ms, "
        f"optimizer {results['optimizer_cpu_ms_per_request']:.2f} ms"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
