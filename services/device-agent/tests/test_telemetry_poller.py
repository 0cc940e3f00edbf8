"""TelemetryPoller against simulated batteries and a meter on loopback and the real broker."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage

from device_agent.coordinator import BatteryDevice, MeterDevice, device_for
from device_agent.intent import DeviceLimits
from device_agent.modbus import DeviceAddress, ModbusBus
from device_agent.repository import RegisteredDevice
from device_agent.telemetry import TelemetryPoller, batch_message_id
from gridloop_common.contracts import CommandSource, routing
from gridloop_common.messaging import Broker, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.battery import BatterySimulator
from gridloop_simulators.meter import MeterSimulator

pytestmark = pytest.mark.connected

CYCLE_TIME = datetime(2026, 5, 4, 12, 0, 5, tzinfo=UTC)


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    async with open_broker(AmqpSettings(), client_name="poller-test", url=amqp_url) as opened:
        yield opened


@pytest.fixture
async def published(broker: Broker) -> AsyncIterator[asyncio.Queue[AbstractIncomingMessage]]:
    """Every telemetry message, on a private queue bound like the ingest queue."""
    arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    channel = await broker.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(routing.TELEMETRY_EXCHANGE, routing.RoutingKeys.TELEMETRY_ALL)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        arrived.put_nowait(message)

    await queue.consume(on_message)
    try:
        yield arrived
    finally:
        await channel.close()


@pytest.fixture
async def bus() -> AsyncIterator[ModbusBus]:
    # A long per-request timeout: only the poller's own per-device deadline cuts a dead device short.
    async with ModbusBus(timeout_s=5.0, backoff_initial_s=0.05, backoff_max_s=0.1) as opened:
        yield opened


def _device(name: str, device_type: str, port: int) -> RegisteredDevice:
    return RegisteredDevice(
        device_id=uuid.uuid4(),
        name=name,
        device_type=device_type,
        address=DeviceAddress("127.0.0.1", port, 1),
        limits=DeviceLimits(),
        site_meter=None,
        ac_power_sign=1,
    )


def _coordinators(devices: list[RegisteredDevice], bus: ModbusBus) -> list[BatteryDevice | MeterDevice]:
    """The device objects the fleet would hand the poller."""
    found = [device_for(device, bus=bus) for device in devices]
    return [coordinator for coordinator in found if coordinator is not None]


class BlackHole:
    """A TCP endpoint that accepts connections and never answers: a hung device."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> BlackHole:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            while await reader.read(1024):
                pass

        self._server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


async def _message(
    published: asyncio.Queue[AbstractIncomingMessage], routing_key: str
) -> tuple[AbstractIncomingMessage, list[dict[str, Any]]]:
    """The next message with this routing key (messages of other keys are set aside)."""
    async with asyncio.timeout(10):
        while True:
            message = await published.get()
            if message.routing_key == routing_key:
                return message, json.loads(message.body)


async def test_readings_carry_the_devices_values_in_flux_units_and_signs(
    broker: Broker, bus: ModbusBus, published: asyncio.Queue[AbstractIncomingMessage]
) -> None:
    async with (
        BatterySimulator(port=0, max_power_w=5000, initial_soc_pct=60, realtime=False) as charging,
        BatterySimulator(port=0, max_power_w=5000, initial_soc_pct=40, realtime=False) as discharging,
        MeterSimulator(port=0, battery=charging, start_s_of_day=12 * 3600, realtime=False) as meter,
    ):
        charging.image.set(124, "StorCtl_Mod", 1)
        charging.image.set_scaled(124, "InWRte", 50.0)  # 50 % of WChaMax 5 kW: +2.5 kW
        discharging.image.set(124, "StorCtl_Mod", 2)
        discharging.image.set_scaled(124, "OutWRte", 40.0)  # -2 kW
        charging.step(1)
        discharging.step(1)
        meter.step(3600)  # an hour of site import for the energy counters
        devices = [
            _device("bess-charging", "bess", charging.port),
            _device("bess-discharging", "bess", discharging.port),
            _device("site-meter", "meter", meter.port),
        ]
        coordinators = _coordinators(devices, bus)
        poller = TelemetryPoller(
            publisher=broker.publisher, devices=lambda: coordinators, interval_s=5.0, batch_size=10
        )
        report = await poller.poll_once(CYCLE_TIME)

        assert report.failed == []
        assert report.published == {"bess": 2, "meter": 1}
        bess_message, bess_rows = await _message(published, routing.RoutingKeys.TELEMETRY_BESS)
        meter_message, meter_rows = await _message(published, routing.RoutingKeys.TELEMETRY_METER)
        expected_power_w = meter.value("W")
        expected_imported_wh = math.floor(meter.imported_wh)

    by_device = {row["device_id"]: row for row in bess_rows}
    assert by_device[str(devices[0].device_id)] == {
        "time": "2026-05-04T12:00:05Z",
        "device_id": str(devices[0].device_id),
        "soe": pytest.approx(60.0, abs=0.1),
        "target_power": 2.5,
        "command_source": CommandSource.AXLE_DISPATCH,
    }
    assert by_device[str(devices[1].device_id)]["target_power"] == -2.0
    assert by_device[str(devices[1].device_id)]["soe"] == pytest.approx(40.0, abs=0.1)
    assert bess_message.message_id == batch_message_id("bess", CYCLE_TIME, [devices[0].device_id, devices[1].device_id])

    [reading] = meter_rows
    assert meter_message.message_id == batch_message_id("meter", CYCLE_TIME, [devices[2].device_id])
    assert reading["device_id"] == str(devices[2].device_id)
    # Importing: the site's load plus the charging battery, positive, in kW.
    assert reading["power_total_active"] == pytest.approx(expected_power_w / 1000, abs=0.01)
    assert reading["power_total_active"] > 2.5
    assert reading["power_phase_a_active"] == pytest.approx(reading["power_total_active"] / 3, abs=0.01)
    assert reading["energy_imported_active"] == expected_imported_wh / 1000
    assert reading["energy_exported_active"] == 0
    assert reading["frequency"] == 50.0
    assert reading["voltage_line_average"] == 400.0
    assert reading["power_factor_total"] == pytest.approx(0.98)
    assert reading["current_phase_average"] == pytest.approx(reading["current_phase_a"], abs=0.01)


async def test_a_dead_device_does_not_delay_the_others_and_is_logged_once_down_and_once_up(
    broker: Broker,
    bus: ModbusBus,
    published: asyncio.Queue[AbstractIncomingMessage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="device_agent.telemetry")
    async with BatterySimulator(port=0, realtime=False) as healthy:
        hung = BlackHole()
        async with hung:
            devices = [_device("healthy", "bess", healthy.port), _device("hung", "bess", hung.port)]
            dead_port = hung.port
            coordinators = _coordinators(devices, bus)
            poller = TelemetryPoller(
                publisher=broker.publisher,
                devices=lambda: coordinators,
                interval_s=5.0,
                device_timeout_s=1.5,
                flush_after_s=0.05,
            )
            for _ in range(2):
                cycle = asyncio.create_task(poller.poll_once(CYCLE_TIME))
                _, rows = await _message(published, routing.RoutingKeys.TELEMETRY_BESS)
                assert [row["device_id"] for row in rows] == [str(devices[0].device_id)]
                # The healthy reading is out while the cycle still waits for the hung device's deadline.
                assert not cycle.done()
                report = await cycle
                assert report.duration_s >= 1.5
                assert report.failed == ["hung"]
            assert poller.unavailable == ["hung"]

        # The hung device comes back (a battery now answers on its port).
        async with BatterySimulator(port=dead_port, realtime=False):
            for _ in range(5):
                report = await poller.poll_once(CYCLE_TIME)
                if not report.failed:
                    break
            assert report.failed == []
            assert report.published == {"bess": 2, "meter": 0}

    down = [record for record in caplog.records if record.getMessage() == "device telemetry unavailable"]
    up = [record for record in caplog.records if record.getMessage() == "device telemetry recovered"]
    assert [record.__dict__["device"] for record in down] == ["hung"]
    assert [record.__dict__["device"] for record in up] == ["hung"]
    assert poller.unavailable == []
