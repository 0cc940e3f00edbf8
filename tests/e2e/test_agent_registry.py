"""The device-agent follows the registry as it changes: started before telemetry-ingest migrated, it drives a
battery registered a moment ago at once, and an action that overtakes its device's registration waits for it.

The agent runs as a real process on a database of its own (empty when it starts), the real broker carries the
actions, and a SunSpec battery simulator on loopback records when the agent's first control write lands. The
periodic registry re-read is set far beyond the bounds asserted here, so only change notices can meet them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import aio_pika.exceptions
import asyncpg
import pytest

from gridloop_common.contracts import BatteryMode, DeviceAction, PowerMode, routing
from gridloop_common.messaging import Publisher, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.battery import BatterySimulator

from .conftest import Stack, _script, eventually

STORAGE = 124
REGISTRY_REFRESH_S = 300  # far beyond every bound below: the periodic re-read can never be what met one
# A loose bound for the pass/fail test; the target (under 2 s from registration to the device write) is
# measured by bench/agent_cold_start.py.
WRITE_BOUND_S = 10.0


class WatchedBattery(BatterySimulator):
    """A battery simulator that notes when the first write to its storage controls (model 124) lands."""

    def __init__(self) -> None:
        super().__init__(port=0, realtime=False)
        self.controlled = asyncio.Event()
        self.controlled_at: float | None = None

    def _after_write(self, address: int, count: int) -> None:
        super()._after_write(address, count)
        found = self.image.locate(address)
        if found is not None and found[0].model_id == STORAGE and not self.controlled.is_set():
            self.controlled_at = time.monotonic()
            self.controlled.set()


def discharging_at(battery: BatterySimulator, power_w: float) -> bool:
    """The battery's controls ask for a discharge of power_w (StorCtl_Mod discharge, OutWRte % of WChaMax)."""
    rate_pct = battery.value(STORAGE, "OutWRte")
    return int(battery.raw(STORAGE, "StorCtl_Mod")) == 2 and abs(rate_pct / 100 * battery.max_power_w - power_w) < 1


@dataclass
class ColdStart:
    stack: Stack
    database_url: str
    publisher: Publisher

    async def migrate_ingest(self) -> None:
        process = await asyncio.create_subprocess_exec(
            _script("gridloop-ingest"),
            "migrate",
            env=self.stack.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()[-2000:]

    async def register(self, name: str, battery: BatterySimulator) -> float:
        """Insert the battery's registry row as the REST API or the CLI would; returns when it committed."""
        metadata = {"max_power_kw": 5, "modbus": {"host": "127.0.0.1", "port": battery.port, "unit_id": 1}}
        connection = await asyncpg.connect(self.database_url)
        try:
            await connection.execute(
                "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', 'TEST', $2)",
                name,
                json.dumps(metadata),
            )
        finally:
            await connection.close()
        return time.monotonic()

    async def send_discharge(self, name: str, setpoint_w: int) -> float:
        now = datetime.now(tz=UTC)
        action = DeviceAction(
            command_id=uuid.uuid4(),
            device_name=name,
            issued_at=now,
            valid_until=now + timedelta(minutes=10),
            mode=BatteryMode.DISCHARGE,
            power_mode=PowerMode.SETPOINT,
            setpoint_w=setpoint_w,
        )
        await self.publisher.publish(
            exchange=routing.DEVICES_EXCHANGE,
            routing_key=routing.device_action_key(name),
            body=action,
            message_id=str(action.action_id),
        )
        return time.monotonic()

    def agent_log(self) -> str:
        return self.stack.logs["agent"].read_text()


@pytest.fixture
async def cold_start(
    service_environment: dict[str, str], database_url: str, tmp_path: Path
) -> AsyncIterator[ColdStart]:
    """An empty database of its own (no service migrated) and the agent's environment pointing at it."""
    server = database_url.rsplit("/", 1)[0]
    name = f"gridloop_cold_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{server}/{name}"
    environment = {
        **service_environment,
        "GRIDLOOP_DATABASE_URL": url,
        "GRIDLOOP_AGENT_REGISTRY_REFRESH_S": str(REGISTRY_REFRESH_S),
        "GRIDLOOP_SHUTDOWN_TIMEOUT_S": "5",
        "GRIDLOOP_LOG_LEVEL": "INFO",
    }
    # The session's vhost is shared: actions earlier tests left for their own agents are not this agent's work.
    connection = await aio_pika.connect(service_environment["GRIDLOOP_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            queue = await channel.declare_queue(routing.Queues.AGENT_DEVICE_ACTIONS, passive=True)
            await queue.purge()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    stack = Stack(environment=environment, upstream=None, pool=pool, log_dir=tmp_path)  # type: ignore[arg-type]
    try:
        async with open_broker(
            AmqpSettings(amqp_url=service_environment["GRIDLOOP_AMQP_URL"]),  # type: ignore[arg-type]
            client_name="test-cold-start",
            startup_timeout_s=10,
        ) as broker:
            yield ColdStart(stack=stack, database_url=url, publisher=broker.publisher)
    finally:
        for process_name in list(stack.processes):
            await stack.stop(process_name, kill=True)
        await pool.close()
        admin = await asyncpg.connect(f"{server}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_an_agent_started_before_the_registry_drives_a_battery_registered_later_at_once(
    cold_start: ColdStart,
) -> None:
    await cold_start.stack.start("agent")
    await eventually(
        lambda: "device registry not found yet" in cold_start.agent_log(), what="the agent finding no registry"
    )
    async with WatchedBattery() as battery:
        await cold_start.migrate_ingest()
        registered_at = await cold_start.register("cold-battery", battery)
        sent_at = await cold_start.send_discharge("cold-battery", 2000)
        try:
            await asyncio.wait_for(battery.controlled.wait(), WRITE_BOUND_S)
        except TimeoutError:
            pytest.fail(f"no device write within {WRITE_BOUND_S} s; the agent's log:\n{cold_start.agent_log()[-6000:]}")
        assert battery.controlled_at is not None
        print(
            f"device write {battery.controlled_at - registered_at:.2f} s after registration, "
            f"{battery.controlled_at - sent_at:.2f} s after the action"
        )
        await eventually(lambda: discharging_at(battery, 2000), timeout_s=5, what="battery set to discharge 2000 W")


async def test_an_action_that_overtakes_its_device_registration_waits_for_it(cold_start: ColdStart) -> None:
    await cold_start.migrate_ingest()
    await cold_start.stack.start("agent")
    async with WatchedBattery() as battery:
        await cold_start.send_discharge("late-battery", 1500)
        await eventually(
            lambda: "action waits for its device's registration" in cold_start.agent_log(),
            what="the action waiting for its device",
        )
        await cold_start.register("late-battery", battery)
        await asyncio.wait_for(battery.controlled.wait(), WRITE_BOUND_S)
        await eventually(lambda: discharging_at(battery, 1500), timeout_s=5, what="battery set to discharge 1500 W")
    assert "is not driven by this agent" not in cold_start.agent_log()


async def test_a_registration_alone_reaches_the_running_agent_through_the_change_notice(cold_start: ColdStart) -> None:
    await cold_start.migrate_ingest()
    await cold_start.stack.start("agent")
    await eventually(
        lambda: "listening for registry changes" in cold_start.agent_log(), what="the agent listening for changes"
    )
    async with WatchedBattery() as battery:
        await cold_start.register("noticed-battery", battery)
        # No action names it: only the change notice can have the agent pick it up before the 300 s re-read.
        await eventually(
            lambda: '"device picked up"' in cold_start.agent_log() and "noticed-battery" in cold_start.agent_log(),
            timeout_s=WRITE_BOUND_S,
            what="the agent picking up the new battery",
        )
