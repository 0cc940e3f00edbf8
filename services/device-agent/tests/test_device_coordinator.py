"""One object per device: the telemetry poller and the control loop share the battery's DeviceCoordinator.

An outage only the poller sees is the device's: the control loop, holding no action and so not touching the
battery itself, publishes it unavailable, and when a poll finds the battery again the loop takes it again
(asks the scheduler for the current action). Real simulator on loopback, real broker.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aio_pika.abc import AbstractIncomingMessage

from device_agent.control_loop import ControlLoop
from device_agent.coordinator import battery_device
from device_agent.intent import DeviceLimits
from device_agent.modbus import DeviceAddress, ModbusBus
from device_agent.repository import RegisteredDevice
from device_agent.telemetry import TelemetryPoller
from gridloop_common.contracts import DeviceAvailability, DeviceResyncRequest, routing
from gridloop_common.messaging import Broker, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.battery import BatterySimulator

pytestmark = pytest.mark.connected

CYCLE_TIME = datetime(2026, 5, 4, 12, 0, 5, tzinfo=UTC)


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    async with open_broker(AmqpSettings(), client_name="coordinator-test", url=amqp_url) as opened:
        yield opened


@pytest.fixture
async def device_messages(broker: Broker) -> AsyncIterator[asyncio.Queue[AbstractIncomingMessage]]:
    """Every availability report and resync request, on a private queue."""
    arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    channel = await broker.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_AVAILABILITY)
    await queue.bind(routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_RESYNC)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        arrived.put_nowait(message)

    await queue.consume(on_message)
    try:
        yield arrived
    finally:
        await channel.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _next(messages: asyncio.Queue[AbstractIncomingMessage], routing_key: str) -> bytes:
    async with asyncio.timeout(15):
        while True:
            message = await messages.get()
            if message.routing_key == routing_key:
                return message.body


async def test_an_outage_the_poller_sees_is_the_control_loops_too_and_a_poll_that_finds_it_again_retakes_it(
    broker: Broker, device_messages: asyncio.Queue[AbstractIncomingMessage]
) -> None:
    port = _free_port()
    device = RegisteredDevice(
        device_id=uuid.uuid4(),
        name="shared-battery",
        device_type="bess",
        address=DeviceAddress("127.0.0.1", port, 1),
        limits=DeviceLimits(),
        site_meter=None,
        ac_power_sign=1,
    )
    simulator = BatterySimulator(port=port, realtime=False)
    await simulator.start()
    async with ModbusBus(timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.1) as bus:
        battery = battery_device(device, bus=bus, revert_timeout_s=60)
        # A long revert period: the loop, holding no action, does not touch the battery by itself meanwhile.
        loop = ControlLoop(battery=battery, publisher=broker.publisher, revert_timeout_s=600)
        poller = TelemetryPoller(publisher=broker.publisher, devices=lambda: [battery], interval_s=5.0)
        task = asyncio.create_task(loop.run_forever())
        try:
            online = DeviceAvailability.model_validate_json(
                await _next(device_messages, routing.RoutingKeys.DEVICE_AVAILABILITY)
            )
            assert online.online is True
            started = DeviceResyncRequest.model_validate_json(
                await _next(device_messages, routing.RoutingKeys.DEVICE_RESYNC)
            )
            assert started.reason == "agent started"
            report = await poller.poll_once(CYCLE_TIME)
            assert report.failed == [] and report.published["bess"] == 1
            assert battery.discoveries == 1  # the poller read through the loop's discovery, not one of its own

            await simulator.stop()
            report = await poller.poll_once(CYCLE_TIME)
            assert report.failed == ["shared-battery"]
            offline = DeviceAvailability.model_validate_json(
                await _next(device_messages, routing.RoutingKeys.DEVICE_AVAILABILITY)
            )
            assert (offline.device_name, offline.online) == ("shared-battery", False)
            assert loop.online is False

            await simulator.start()
            async with asyncio.timeout(15):
                # Each poll fails at once until the bus's reconnect backoff lets it reach the battery again.
                while (report := await poller.poll_once(CYCLE_TIME)).failed:
                    await asyncio.sleep(0.2)
            assert report.failed == []
            back = DeviceResyncRequest.model_validate_json(
                await _next(device_messages, routing.RoutingKeys.DEVICE_RESYNC)
            )
            assert (back.device_name, back.reason) == ("shared-battery", "device reachable again")
            assert loop.online is True
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await simulator.stop()
