"""The outcome of an applied action says where the battery does other than the action asks: SAVINGS runs
as self-consumption, and the deprecated enable_grid_export and maximum_charge_percentage are ignored."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from device_agent.control_loop import ControlLoop
from device_agent.coordinator import battery_device
from device_agent.intent import DeviceLimits
from device_agent.modbus import DeviceAddress, ModbusBus
from device_agent.repository import RegisteredDevice
from gridloop_common.contracts import DeviceAction, DeviceOutcome
from gridloop_common.messaging import open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.battery import BatterySimulator

pytestmark = pytest.mark.connected

SAVINGS_NOTE = "SAVINGS follows the optimizer's plan for the device, and self-consumption while there is none"


@pytest.fixture
async def controller(amqp_url: str) -> AsyncIterator[ControlLoop]:
    async with (
        BatterySimulator(port=0, capacity_wh=10_000, max_power_w=5_000, initial_soc_pct=60, realtime=False) as battery,
        ModbusBus(timeout_s=1.0) as bus,
        open_broker(AmqpSettings(), client_name="outcome-test", url=amqp_url) as broker,
    ):
        controller = ControlLoop(
            battery=battery_device(_device(battery.port), bus=bus, revert_timeout_s=60),
            publisher=broker.publisher,
            revert_timeout_s=60,
        )
        task = asyncio.create_task(controller.run_forever())
        try:
            yield controller
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def _device(port: int) -> RegisteredDevice:
    return RegisteredDevice(
        device_id=uuid.uuid4(),
        name="battery-outcome",
        device_type="bess",
        address=DeviceAddress("127.0.0.1", port, 1),
        limits=DeviceLimits(),
        site_meter=None,
        ac_power_sign=1,
    )


async def _outcome(controller: ControlLoop, **fields: Any) -> DeviceOutcome:
    action = DeviceAction.model_validate(
        {"device_name": "battery-outcome", "issued_at": datetime.now(tz=UTC), "command_id": uuid.uuid4(), **fields}
    )
    outcome = await controller.submit(action)
    assert outcome is not None and outcome.applied, outcome
    return outcome


async def test_savings_says_it_runs_as_self_consumption(controller: ControlLoop) -> None:
    outcome = await _outcome(controller, mode="SAVINGS")
    assert outcome.reason == SAVINGS_NOTE


async def test_deprecated_settings_are_named_as_ignored(controller: ControlLoop) -> None:
    outcome = await _outcome(
        controller,
        mode="SAVINGS",
        enable_grid_export=False,
        maximum_charge_percentage=80,
    )
    assert outcome.reason == (
        f"{SAVINGS_NOTE}; enable_grid_export and maximum_charge_percentage ignored (deprecated upstream)"
    )

    discharge = await _outcome(
        controller, mode="DISCHARGE", power_mode="SETPOINT", setpoint_w=2000, enable_grid_export=True
    )
    assert discharge.reason == "enable_grid_export ignored (deprecated upstream)"


async def test_an_action_carried_out_as_asked_has_no_reason(controller: ControlLoop) -> None:
    outcome = await _outcome(controller, mode="SELF_CONSUMPTION")
    assert outcome.reason is None
