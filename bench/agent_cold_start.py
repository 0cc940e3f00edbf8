"""Benchmark of the device-agent's cold start: how soon a battery registered after the agent started is driven.

Each round is the order of a fresh deployment where the agent wins the race: an empty database, the
device-agent started (with the default 30 s periodic registry re-read) and finding no registry, then
telemetry-ingest's `migrate`, a battery registered (an INSERT, as the REST API or the CLI does) and at once a
DISCHARGE action for it on the broker. Measured: registration -> the agent's first write on the simulated
battery's storage controls (model 124), and action -> that write. The target is under 2 s; before the agent
listened for registry changes it was ~28 s (the next periodic re-read).

Everything runs on 127.0.0.1: a private vhost and database per round, removed at the end. Figures are printed
and written to bench/results/agent_cold_start.json. Run: `uv run python bench/agent_cold_start.py`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from infrastructure import Infrastructure, free_port

from gridloop_common.contracts import BatteryMode, DeviceAction, PowerMode, routing
from gridloop_common.messaging import open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.battery import BatterySimulator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "agent_cold_start.json"
BIN = Path(sys.executable).parent
ROUNDS = 5
STORAGE = 124


class WatchedBattery(BatterySimulator):
    """Notes when the first write to the storage controls lands."""

    def __init__(self) -> None:
        super().__init__(port=0, realtime=False)
        self.controlled = asyncio.Event()
        self.controlled_at = 0.0

    def _after_write(self, address: int, count: int) -> None:
        super()._after_write(address, count)
        found = self.image.locate(address)
        if found is not None and found[0].model_id == STORAGE and not self.controlled.is_set():
            self.controlled_at = time.monotonic()
            self.controlled.set()


async def _until(check: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check() if callable(check) else check
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _watch_log(agent: asyncio.subprocess.Process, no_registry: asyncio.Event) -> None:
    """Read the agent's log to its end; note when it reports that the registry does not exist yet."""
    assert agent.stdout is not None
    async for line in agent.stdout:
        if b"device registry not found yet" in line:
            no_registry.set()


async def one_round() -> dict[str, float]:
    async with Infrastructure() as run, WatchedBattery() as battery:
        port = free_port()
        environment = run.environment(GRIDLOOP_AGENT_PORT=str(port), GRIDLOOP_OCPP_PORT=str(free_port()))
        agent = await asyncio.create_subprocess_exec(
            str(BIN / "gridloop-agent"), env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        no_registry = asyncio.Event()
        reader = asyncio.create_task(_watch_log(agent, no_registry))
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:

                async def ready() -> bool:
                    try:
                        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await _until(ready, "agent ready")
            await asyncio.wait_for(no_registry.wait(), 30)
            migrate = await asyncio.create_subprocess_exec(
                str(BIN / "gridloop-ingest"),
                "migrate",
                env={**environment, "GRIDLOOP_JWT_SECRET": "bench-secret-with-at-least-thirty-two-characters"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert await migrate.wait() == 0, "gridloop-ingest migrate failed"
            metadata = {"max_power_kw": 5, "modbus": {"host": "127.0.0.1", "port": battery.port, "unit_id": 1}}
            async with open_broker(
                AmqpSettings(amqp_url=run.amqp_url),  # type: ignore[arg-type]
                client_name="bench-cold-start",
                startup_timeout_s=10,
            ) as broker:
                connection = await asyncpg.connect(run.database_url)
                await connection.execute(
                    "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ('b1', 'bess', 'B', $1)",
                    json.dumps(metadata),
                )
                registered_at = time.monotonic()
                await connection.close()
                now = datetime.now(tz=UTC)
                action = DeviceAction(
                    device_name="b1",
                    issued_at=now,
                    valid_until=now + timedelta(minutes=10),
                    mode=BatteryMode.DISCHARGE,
                    power_mode=PowerMode.SETPOINT,
                    setpoint_w=2000,
                )
                await broker.publisher.publish(
                    exchange=routing.DEVICES_EXCHANGE, routing_key=routing.device_action_key("b1"), body=action
                )
                sent_at = time.monotonic()
                await asyncio.wait_for(battery.controlled.wait(), 60)
            return {
                "registration_to_write_s": battery.controlled_at - registered_at,
                "action_to_write_s": battery.controlled_at - sent_at,
            }
        finally:
            agent.send_signal(signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), 25)
            await reader


async def main() -> None:
    rounds = [await one_round() for _ in range(ROUNDS)]
    results: dict[str, object] = {"measured_at": datetime.now(tz=UTC).isoformat(), "machine": platform.node()}
    for figure in ("registration_to_write_s", "action_to_write_s"):
        values = sorted(measured[figure] for measured in rounds)
        results[figure] = {
            "median": round(statistics.median(values), 3),
            "max": round(values[-1], 3),
            "all": [round(value, 3) for value in values],
        }
        print(f"{figure}: median {statistics.median(values):.3f} s, max {values[-1]:.3f} s over {ROUNDS} rounds")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
