"""Benchmark of the gateway's share of an operator request: POST /calculate_mpc through the real gateway.

docs/design.md §8 and issue 17 ask for `POST /calculate_mpc` for one site at p99 under 100 ms through the
gateway. This measures what the gateway and the broker add to whatever the optimizer takes: the real
`gridloop-gateway` process (pinned to core 0) checks the key and the body and makes the RPC on
`gridloop.rpc`; a stand-in optimizer in this process answers each request at once with a fixed plan of
12 ten-minute steps. One keep-alive client sends the requests one after another (an operator's pace, not a
load test), after a warm-up. Printed, and written to bench/results/operator_endpoints.json.

Run: `uv run python bench/operator_endpoints.py`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from commands import BIN, bench_infrastructure, cpu_seconds, percentile, pinned, process
from infrastructure import free_port

from gridloop_common.auth import issue_key
from gridloop_common.contracts import OperatorReply, routing
from gridloop_common.messaging import Delivery, open_broker, rpc_handler
from gridloop_common.settings import AmqpSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "operator_endpoints.json"
WARM_UP = 200
REQUESTS = 2000
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


_PLAN = (
    OperatorReply(
        body={
            "run_id": "bench-run",
            "state": "optimal",
            "objective": 1.23,
            "sites": [
                {
                    "site": "bench-site",
                    "import_kw": [3.5] * STEPS,
                    "devices": [{"name": "battery-1", "type": "bess", "setpoints": [-2.0] * STEPS}],
                    "violations": [],
                }
            ],
        }
    )
    .model_dump_json()
    .encode()
)


async def _answer(delivery: Delivery) -> bytes:
    return _PLAN


async def measure() -> dict[str, Any]:
    async with bench_infrastructure() as infrastructure:
        port = free_port()
        environment = infrastructure.environment(GRIDLOOP_GATEWAY_PORT=str(port))
        key = issue_key(environment["GRIDLOOP_JWT_SECRET"], "grid_operator")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with (
            open_broker(AmqpSettings(amqp_url=infrastructure.amqp_url), client_name="bench-optimizer") as broker,
            broker.consumer(routing.Queues.OPTIMIZER_RPC, rpc_handler(broker.publisher, _answer), drain_timeout_s=5),
            process(
                pinned([str(BIN / "gridloop-gateway")], core=0),
                environment,
                ready_url=f"http://127.0.0.1:{port}/readyz",
            ) as gateway_pid,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client,
        ):
            body = _body(datetime.now(tz=UTC))
            for _ in range(WARM_UP):
                response = await client.post("/calculate_mpc", content=body, headers=headers)
                assert response.status_code == 200, response.text
            latencies_ms: list[float] = []
            cpu_before = cpu_seconds(gateway_pid)
            started = time.perf_counter()
            for _ in range(REQUESTS):
                sent = time.perf_counter()
                response = await client.post("/calculate_mpc", content=body, headers=headers)
                latencies_ms.append((time.perf_counter() - sent) * 1000)
                assert response.status_code == 200, response.text
            elapsed = time.perf_counter() - started
            gateway_cpu_us = (cpu_seconds(gateway_pid) - cpu_before) / REQUESTS * 1e6
    return {
        "measured_at": datetime.now(tz=UTC).isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "requests": REQUESTS,
        "body_bytes": len(body),
        "p50_ms": statistics.median(latencies_ms),
        "p90_ms": percentile(latencies_ms, 0.90),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": max(latencies_ms),
        "requests_per_second": REQUESTS / elapsed,
        "gateway_cpu_us_per_request": gateway_cpu_us,
    }


def main() -> None:
    results = asyncio.run(measure())
    print(
        f"POST /calculate_mpc through the gateway, stand-in optimizer answering at once ({results['requests']} "
        f"sequential requests): p50 {results['p50_ms']:.2f} ms  p90 {results['p90_ms']:.2f} ms  "
        f"p99 {results['p99_ms']:.2f} ms  max {results['max_ms']:.1f} ms  "
        f"gateway CPU {results['gateway_cpu_us_per_request']:.0f} us/request"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
