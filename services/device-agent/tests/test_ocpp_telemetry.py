"""What the central system publishes from a simulated charger's meter values, against the real broker and database:
``EvChargerReading`` lists on telemetry.ev_charger, and a failed outcome when the charger draws above the profile
it accepted (issue 18 item 2's confirmation by the next meter values)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from device_agent.chargers.central_system import CentralSystem
from device_agent.repository import find_charger
from gridloop_common.clock import SystemClock
from gridloop_common.contracts import BatteryMode, DeviceAction, DeviceOutcome, EvChargerReading, PowerMode, routing
from gridloop_common.db import migrate_database, open_pool
from gridloop_common.messaging import Broker, QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.charger import CarVisit, ChargerSimulator

pytestmark = pytest.mark.connected

PASSWORD = "correct horse battery staple"
WAIT_S = 15.0
RATED_W = 16 * 3 * 230.0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_database(database_url, owner="telemetry-ingest", package="telemetry_ingest")
    async with open_pool(database_url, min_size=1, max_size=4) as opened:
        yield opened


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    settings = AmqpSettings(amqp_url=amqp_url, amqp_prefetch=10, amqp_confirm_timeout_s=5.0)
    async with open_broker(settings, client_name=f"test-{uuid.uuid4().hex[:6]}", url=amqp_url) as opened:
        yield opened


@pytest.fixture
async def central_system(pool: asyncpg.Pool, broker: Broker) -> AsyncIterator[tuple[CentralSystem, str]]:
    system = CentralSystem(
        find_charger=lambda ocpp_id: find_charger(pool, ocpp_id),
        publisher=broker.publisher,
        clock=SystemClock(),
        heartbeat_interval_s=5,
        offline_margin_s=2.0,
        confirm_settle_s=0.3,
    )
    async with system.serving("127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield system, f"ws://127.0.0.1:{port}/ocpp"


async def _queue(broker: Broker, exchange: str, routing_key: str) -> str:
    name = f"test.ocpp-telemetry.{uuid.uuid4().hex[:10]}"
    await declare_queue(broker.channel, QueueSpec(name, bindings=((exchange, routing_key),)))
    return name


async def _register(pool: asyncpg.Pool, ocpp_id: str) -> tuple[str, uuid.UUID]:
    name = f"charger-{uuid.uuid4().hex[:8]}"
    device_id = await pool.fetchval(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'electric_vehicle_v1g', 'TEST',"
        " $2::jsonb) RETURNING id",
        name,
        {"ocpp": {"id": ocpp_id, "password_sha256": hashlib.sha256(PASSWORD.encode()).hexdigest()}, "max_power_kw": 11},
    )
    return name, device_id


async def _next_body(broker: Broker, queue_name: str, accept: Any) -> Any:
    """The first message body on ``queue_name`` (parsed JSON) that ``accept`` returns something for."""
    queue = await broker.channel.get_queue(queue_name, ensure=False)
    async with queue.iterator() as messages, asyncio.timeout(WAIT_S):
        async for message in messages:
            await message.ack()
            found = accept(json.loads(message.body))
            if found is not None:
                return found
    raise AssertionError("the queue closed first")


async def test_meter_values_are_published_as_ev_charger_readings(
    pool: asyncpg.Pool, broker: Broker, central_system: tuple[CentralSystem, str]
) -> None:
    _, url = central_system
    readings_queue = await _queue(broker, routing.TELEMETRY_EXCHANGE, routing.RoutingKeys.TELEMETRY_EV_CHARGER)
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    _, device_id = await _register(pool, ocpp_id)
    simulator = ChargerSimulator(
        url=url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        car=CarVisit(arrive_after_s=0.0, initial_soc_percentage=40.0),
        meter_interval_s=0.1,
        tick_s=0.05,
    )

    def charging(batch: list[dict[str, Any]]) -> EvChargerReading | None:
        for item in batch:
            reading = EvChargerReading.model_validate(item)
            if reading.device_id == device_id and reading.power_kw and reading.soc_pct is not None:
                return reading
        return None

    async with simulator:
        reading = await _next_body(broker, readings_queue, charging)

    assert reading.power_kw == pytest.approx(RATED_W / 1000)
    assert reading.soc_pct is not None and 40.0 <= reading.soc_pct < 41.0
    assert reading.energy_import_kwh is not None and reading.energy_import_kwh >= 0
    assert reading.transaction_id is not None
    assert reading.connector_status == "Charging"


async def test_a_charger_drawing_above_its_accepted_profile_gives_a_failed_outcome(
    pool: asyncpg.Pool, broker: Broker, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    outcomes_queue = await _queue(broker, routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_OUTCOME)
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    name, _ = await _register(pool, ocpp_id)
    # A faulty charger: it accepts every profile and goes on at its rated 11 kW.
    simulator = ChargerSimulator(
        url=url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        car=CarVisit(arrive_after_s=0.0, initial_soc_percentage=40.0),
        meter_interval_s=0.1,
        tick_s=0.05,
        ignore_profiles=True,
    )
    now = datetime.now(tz=UTC)
    action = DeviceAction(
        device_name=name,
        mode=BatteryMode.CHARGE,
        power_mode=PowerMode.SETPOINT,
        setpoint_w=5000,
        issued_at=now,
        valid_until=now + timedelta(minutes=10),
    )
    async with simulator:
        async with asyncio.timeout(WAIT_S):
            await system.session_for(name)
        accepted = await system.carry_out(action, find_charger_by_name_unused)
        assert accepted is not None and accepted.applied, accepted

        def failed(body: dict[str, Any]) -> DeviceOutcome | None:
            outcome = DeviceOutcome.model_validate(body)
            return outcome if outcome.device_name == name and not outcome.applied else None

        outcome = await _next_body(broker, outcomes_queue, failed)

    assert outcome.action_id == action.action_id
    assert outcome.reason == (
        f"charger {name} draws {RATED_W:.0f} W, outside the limit of 5000 W of the profile it accepted "
        "(tolerance 250 W)"
    )


async def find_charger_by_name_unused(name: str) -> None:
    """carry_out's registry lookup, needed only for a charger that is not connected (this one is)."""
