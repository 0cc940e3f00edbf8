"""A battery controller asks the scheduler for the device's current action when it takes the device.

Against the real broker and the SunSpec battery simulator on loopback: at start-up, and again when the
device is back after it was unreachable (issue 14, P1).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from device_agent.control_loop import ControlLoop
from device_agent.coordinator import battery_device
from device_agent.intent import DeviceLimits
from device_agent.modbus.bus import DeviceAddress, ModbusBus
from device_agent.repository import RegisteredDevice
from gridloop_common.contracts import BatteryMode, DeviceAction, DeviceResyncRequest, PowerMode, routing
from gridloop_common.messaging import Broker, QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.battery import BatterySimulator


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    settings = AmqpSettings(amqp_url=amqp_url, amqp_prefetch=10, amqp_confirm_timeout_s=5.0)
    async with open_broker(settings, client_name=f"test-{uuid.uuid4().hex[:6]}", url=amqp_url) as opened:
        yield opened


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _next_request(broker: Broker, queue_name: str, *, timeout_s: float) -> DeviceResyncRequest:
    """The next resync request on the queue, awaited as the broker delivers it."""
    queue = await broker.channel.get_queue(queue_name, ensure=False)
    async with queue.iterator() as messages:
        async with asyncio.timeout(timeout_s):
            async for message in messages:
                await message.ack()
                return DeviceResyncRequest.model_validate_json(message.body)
    raise AssertionError("the queue closed before a resync request arrived")


async def test_the_controller_asks_for_the_current_action_at_start_and_when_the_device_is_back(
    broker: Broker,
) -> None:
    queue_name = f"test.resync.{uuid.uuid4().hex[:10]}"
    await declare_queue(
        broker.channel, QueueSpec(queue_name, bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_RESYNC),))
    )
    port = _free_port()
    simulator = BatterySimulator(port=port)
    device = RegisteredDevice(
        device_id=uuid.uuid4(),
        name="resync-battery",
        device_type="bess",
        address=DeviceAddress(host="127.0.0.1", port=port, unit_id=1),
        limits=DeviceLimits(),
        site_meter=None,
        ac_power_sign=1,
    )
    await simulator.start()
    async with ModbusBus(timeout_s=0.5) as bus:
        controller = ControlLoop(
            battery=battery_device(device, bus=bus, revert_timeout_s=10),
            publisher=broker.publisher,
            revert_timeout_s=10,
        )
        task = asyncio.create_task(controller.run_forever())
        try:
            started = await _next_request(broker, queue_name, timeout_s=10)
            assert (started.device_name, started.reason) == ("resync-battery", "agent started")
            now = datetime.now(tz=UTC)
            action = DeviceAction(
                device_name="resync-battery",
                mode=BatteryMode.DISCHARGE,
                power_mode=PowerMode.SETPOINT,
                setpoint_w=2000,
                issued_at=now,
                valid_until=now + timedelta(minutes=10),
            )
            outcome = await controller.submit(action)
            assert outcome is not None and outcome.applied

            await simulator.stop()  # unreachable: the controller finds out when it next refreshes the timer
            async with asyncio.timeout(15):
                while controller.online is not False:
                    await asyncio.sleep(0.1)
            writes_before_return = len(simulator.control_writes)
            await simulator.start()

            back = await _next_request(broker, queue_name, timeout_s=20)
            assert (back.device_name, back.reason) == ("resync-battery", "device reachable again")
            assert back.request_id != started.request_id
            # It asks rather than re-writing what it held before the outage, which may have been replaced since.
            assert simulator.control_writes[writes_before_return:] == []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await simulator.stop()
