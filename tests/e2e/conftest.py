"""An end-to-end stack: gateway, scheduler and device-agent as real processes; simulators in-process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from gridloop_simulators.battery import BatterySimulator
from gridloop_simulators.upstream import UpstreamSimulator

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REVERT_TIMEOUT_S = 10
T = TypeVar("T")

SCRIPTS = {
    "gateway": ("gridloop-gateway", "GRIDLOOP_GATEWAY_PORT"),
    "scheduler": ("gridloop-scheduler", "GRIDLOOP_SCHEDULER_PORT"),
    "scheduler-2": ("gridloop-scheduler", "GRIDLOOP_SCHEDULER_PORT"),
    "agent": ("gridloop-agent", "GRIDLOOP_AGENT_PORT"),
    "optimizer": ("gridloop-optimizer", "GRIDLOOP_OPTIMIZER_PORT"),
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


async def eventually(check: Callable[[], Awaitable[T | None] | T | None], *, timeout_s: float = 30.0, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


def command(device_id: str, *, starts_in_s: float = 0, lasts_s: float | None = 1800, **battery: Any) -> dict[str, Any]:
    now = datetime.now(tz=UTC)
    starts_at = now + timedelta(seconds=starts_in_s)
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "device_id": device_id,
        "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + timedelta(seconds=lasts_s)).isoformat() if lasts_s is not None else None,
        "duration_s": lasts_s,
        "is_preparatory_action": False,
        "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000, **battery},
    }
    return body


@dataclass
class Stack:
    environment: dict[str, str]
    upstream: UpstreamSimulator
    pool: asyncpg.Pool
    batteries: dict[str, BatterySimulator] = field(default_factory=dict)
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    log_dir: Path = Path(".")

    async def start(self, name: str) -> None:
        script, port_variable = SCRIPTS[name]
        environment = dict(self.environment)
        port = _free_port()
        environment[port_variable] = str(port)
        if name == "agent":
            self.ports["ocpp"] = _free_port()  # its OCPP server: never the fixed 9000
            environment["GRIDLOOP_OCPP_PORT"] = str(self.ports["ocpp"])
        log = self.log_dir / f"{name}-{len(self.logs)}.log"
        self.logs[name] = log
        handle = log.open("wb")
        process = await asyncio.create_subprocess_exec(
            _script(script), env=environment, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        self.processes[name] = process
        self.ports[name] = port
        async with httpx.AsyncClient(timeout=1.0) as client:

            async def ready() -> bool:
                assert process.returncode is None, f"{name} exited: {log.read_text()[-2000:]}"
                try:
                    return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout_s=45, what=f"{name} ready")
        if name == "gateway":
            self.upstream.webhook_url = f"http://127.0.0.1:{port}/v1/webhooks"

    async def stop(self, name: str, *, kill: bool = False) -> None:
        process = self.processes.pop(name)
        if process.returncode is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 25)

    async def add_battery(
        self, name: str, *, max_power_kw: float = 5, soc: float = 60, site: str = "TEST", **metadata: Any
    ) -> BatterySimulator:
        simulator = BatterySimulator(port=0, max_power_w=max_power_kw * 1000, initial_soc_pct=soc)
        await simulator.__aenter__()
        self.batteries[name] = simulator
        await self.register(name, port=simulator.port, max_power_kw=max_power_kw, site=site, **metadata)
        return simulator

    async def register(
        self,
        name: str,
        *,
        port: int,
        device_type: str = "bess",
        max_power_kw: float = 5,
        site: str = "TEST",
        **extra: Any,
    ) -> None:
        metadata = {
            "capacity_kwh": 13.5,
            "max_power_kw": max_power_kw,
            "modbus": {"host": "127.0.0.1", "port": port, "unit_id": 1, "profile": "sunspec"},
            **extra,
        }
        await self.pool.execute(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, $2, $3, $4::jsonb)",
            name,
            device_type,
            site,
            json.dumps(metadata),
        )

    def acks_for(self, command_id: str) -> list[dict[str, Any]]:
        return [ack for ack in self.upstream.acks if ack["command_id"] == command_id and ack["status_code"] == 200]

    async def wait_acks(self, command_id: str, count: int, *, timeout_s: float = 30) -> list[dict[str, Any]]:
        return await eventually(
            lambda: (acks := self.acks_for(command_id)) and len(acks) >= count and acks,
            timeout_s=timeout_s,
            what=f"{count} ack(s) for {command_id}",
        )

    async def state_of(self, command_id: str) -> str | None:
        value = await self.pool.fetchval(
            "SELECT state FROM scheduler.commands WHERE command_id = $1", uuid.UUID(command_id)
        )
        return None if value is None else str(value)


@pytest.fixture
async def stack(service_environment: dict[str, str], database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    environment = {
        **service_environment,
        "GRIDLOOP_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GRIDLOOP_AGENT_REGISTRY_REFRESH_S": "0.5",
        "GRIDLOOP_AGENT_REVERT_TIMEOUT_S": str(REVERT_TIMEOUT_S),
        "GRIDLOOP_SHUTDOWN_TIMEOUT_S": "5",
        "GRIDLOOP_LOG_LEVEL": "INFO",
    }
    # The optimizer migrates its schema when it starts: only the tests that start it pay for it.
    for script in ("gridloop-ingest", "gridloop-scheduler"):
        subprocess.run([_script(script), "migrate"], env=environment, check=True, capture_output=True)
    async with UpstreamSimulator(webhook_secret=WEBHOOK_SECRET, retry_delays_s=(0.2, 0.5, 1, 2)) as upstream:
        environment["GRIDLOOP_UPSTREAM_URL"] = upstream.url
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        assert pool is not None
        stack = Stack(environment=environment, upstream=upstream, pool=pool, log_dir=tmp_path)
        try:
            yield stack
        finally:
            for name in list(stack.processes):
                await stack.stop(name, kill=True)
            if "optimizer" in stack.logs:
                # The database outlives the test: an MPC left active would be resumed by the next test's optimizer.
                await pool.execute(
                    "UPDATE optimizer.mpc_sessions SET state = 'stopped', ended_at = now() WHERE state = 'active'"
                )
            for simulator in stack.batteries.values():
                await simulator.__aexit__(None, None, None)
            await pool.close()
            if os.environ.get("GRIDLOOP_TEST_SHOW_LOGS"):
                for name, log in stack.logs.items():
                    print(f"==== {name}\n{log.read_text()[-5000:]}")
