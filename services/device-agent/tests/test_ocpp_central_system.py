"""The agent's OCPP central system against the charger simulator (the ``ocpp`` library's charge-point side).

Real PostgreSQL (telemetry-ingest's registry, read at each connection) and RabbitMQ (availability reports), on
loopback: a registered charger is accepted and reports; an unknown identity, a wrong password, no password and
the wrong OCPP version are refused; a closed connection is reported offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from websockets.exceptions import InvalidStatus

from device_agent.chargers.central_system import CentralSystem, ChargerSession
from device_agent.fleet import Fleet
from device_agent.handlers import device_action_handler
from device_agent.modbus.bus import ModbusBus
from device_agent.repository import charger_named, find_charger
from gridloop_common.clock import SystemClock
from gridloop_common.contracts import (
    BatteryMode,
    DeviceAction,
    DeviceAvailability,
    DeviceOutcome,
    DeviceResyncRequest,
    PowerMode,
    routing,
)
from gridloop_common.db import migrate_database, open_pool
from gridloop_common.messaging import Broker, Delivery, QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.charger import CarVisit, ChargerSimulator, ChargerSpec, UnacceptedProtocol

pytestmark = pytest.mark.connected

HEARTBEAT_S = 1
PASSWORD = "correct horse battery staple"
WAIT_S = 15.0


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
async def availability_queue(broker: Broker) -> str:
    name = f"test.ocpp-availability.{uuid.uuid4().hex[:10]}"
    await declare_queue(
        broker.channel, QueueSpec(name, bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_AVAILABILITY),))
    )
    return name


@pytest.fixture
async def central_system(pool: asyncpg.Pool, broker: Broker) -> AsyncIterator[tuple[CentralSystem, str]]:
    system = CentralSystem(
        find_charger=lambda ocpp_id: find_charger(pool, ocpp_id),
        publisher=broker.publisher,
        clock=SystemClock(),
        heartbeat_interval_s=HEARTBEAT_S,
        offline_margin_s=1.0,
    )
    async with system.serving("127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield system, f"ws://127.0.0.1:{port}/ocpp"


async def _register(pool: asyncpg.Pool, device_type: str, ocpp: dict[str, Any], **metadata: Any) -> str:
    name = f"charger-{uuid.uuid4().hex[:8]}"
    await pool.execute(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, $2, 'TEST', $3::jsonb)",
        name,
        device_type,
        {"ocpp": ocpp, **metadata},
    )
    return name


def _hashed(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


async def _availability_of(broker: Broker, queue_name: str, device_name: str) -> DeviceAvailability:
    """The next availability report for ``device_name``, awaited as the broker delivers it."""
    queue = await broker.channel.get_queue(queue_name, ensure=False)
    async with queue.iterator() as messages, asyncio.timeout(WAIT_S):
        async for message in messages:
            await message.ack()
            report = DeviceAvailability.model_validate_json(message.body)
            if report.device_name == device_name:
                return report
    raise AssertionError("the queue closed before an availability report arrived")


async def _session(system: CentralSystem, name: str) -> ChargerSession:
    async with asyncio.timeout(WAIT_S):
        return await system.session_for(name)


async def test_a_registered_v1g_charger_is_accepted_reports_and_is_offline_when_it_disconnects(
    pool: asyncpg.Pool,
    broker: Broker,
    availability_queue: str,
    central_system: tuple[CentralSystem, str],
) -> None:
    system, url = central_system
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    name = await _register(
        pool, "electric_vehicle_v1g", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)}, max_power_kw=11
    )
    simulator = ChargerSimulator(
        url=url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        protocol="ocpp1.6",
        car=CarVisit(arrive_after_s=0.0, initial_soc_percentage=40.0),
        meter_interval_s=0.2,
        tick_s=0.1,
    )
    await simulator.connect()
    try:
        assert (simulator.boot_status, simulator.heartbeat_interval_s) == ("Accepted", HEARTBEAT_S)
        online = await _availability_of(broker, availability_queue, name)
        assert (online.online, online.reason) == (True, None)

        session = await _session(system, name)
        async with asyncio.timeout(WAIT_S):
            await session.wait_until(lambda current: current.heartbeats >= 1)
            # With the car plugged in and no profile, it charges at its rated 11 kW (16 A on three phases).
            await session.wait_until(
                lambda current: (
                    current.latest_reading is not None
                    and current.latest_reading.power_w is not None
                    and current.latest_reading.power_w > 0
                    and current.latest_reading.soc_percentage is not None
                )
            )
        reading = session.latest_reading
        assert reading is not None and reading.power_w == pytest.approx(16 * 3 * 230.0)
        assert reading.soc_percentage is not None and reading.soc_percentage >= 40.0
        assert session.booted_as == ("gridloop", "gridloop-sim")
        assert session.transaction_id is not None
        assert session.connector_status == "Charging"
    finally:
        await simulator.disconnect()

    offline = await _availability_of(broker, availability_queue, name)
    assert (offline.online, offline.reason) == (False, "OCPP connection closed")
    assert session.connected is False


async def test_a_v2g_charger_speaks_ocpp_2_1_and_its_transaction_events_are_handled(
    pool: asyncpg.Pool,
    broker: Broker,
    availability_queue: str,
    central_system: tuple[CentralSystem, str],
) -> None:
    system, url = central_system
    ocpp_id = f"V2G-{uuid.uuid4().hex[:6]}"
    # No protocol registered: a V2G charger speaks OCPP 2.1.
    name = await _register(pool, "electric_vehicle_v2g", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)})
    resync_queue = f"test.ocpp-resync.{uuid.uuid4().hex[:10]}"
    await declare_queue(
        broker.channel,
        QueueSpec(resync_queue, bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_RESYNC),)),
    )
    simulator = ChargerSimulator(
        url=url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        protocol="ocpp2.1",
        spec=ChargerSpec(v2g=True),
        car=CarVisit(arrive_after_s=0.0, leave_after_s=1.0, initial_soc_percentage=70.0),
        meter_interval_s=0.2,
        tick_s=0.1,
    )
    async with simulator:
        assert simulator.boot_status == "Accepted"
        session = await _session(system, name)
        async with asyncio.timeout(WAIT_S):
            await session.wait_until(lambda current: current.transaction_id is not None)
            started = session.transaction_id
            await session.wait_until(
                lambda current: current.latest_reading is not None and current.latest_reading.soc_percentage is not None
            )
            # The car leaves after a second: TransactionEvent Ended closes the transaction, then the connector is free.
            await session.wait_until(lambda current: current.transaction_id is None)
            await session.wait_until(lambda current: current.connector_status == "Available")
        assert started is not None
        assert (await _availability_of(broker, availability_queue, name)).online is True
        # Taken under control like a battery: the scheduler is asked for the charger's current action.
        queue = await broker.channel.get_queue(resync_queue, ensure=False)
        async with queue.iterator() as messages, asyncio.timeout(WAIT_S):
            async for message in messages:
                await message.ack()
                request = DeviceResyncRequest.model_validate_json(message.body)
                break
        assert (request.device_name, request.reason) == (name, "charger connected")


async def test_an_unknown_charger_is_refused_with_404(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    simulator = ChargerSimulator(url=url, charge_point_id="NOT-REGISTERED", password=PASSWORD)
    refused_before = _refused(404)

    with pytest.raises(InvalidStatus) as refused:
        await simulator.connect()

    assert refused.value.response.status_code == 404
    assert system.sessions == {}
    assert _refused(404) == refused_before + 1


async def test_a_battery_with_an_ocpp_block_is_not_a_charger(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    _, url = central_system
    ocpp_id = f"BAT-{uuid.uuid4().hex[:6]}"
    await _register(pool, "bess", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)})

    with pytest.raises(InvalidStatus) as refused:
        await ChargerSimulator(url=url, charge_point_id=ocpp_id, password=PASSWORD).connect()

    assert refused.value.response.status_code == 404


@pytest.mark.parametrize(
    ("registered_hash", "password"),
    [(_hashed(PASSWORD), "wrong password"), (_hashed(PASSWORD), None), (None, PASSWORD)],
    ids=["wrong-password", "no-credentials", "no-password-registered"],
)
async def test_a_charger_without_the_registered_password_is_refused_with_401(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str], registered_hash: str | None, password: str | None
) -> None:
    system, url = central_system
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    await _register(pool, "on_off_ev_charger", {"id": ocpp_id, "password_sha256": registered_hash})

    with pytest.raises(InvalidStatus) as refused:
        await ChargerSimulator(url=url, charge_point_id=ocpp_id, password=password).connect()

    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic")
    assert system.sessions == {}


async def test_a_charger_speaking_another_ocpp_version_than_registered_is_closed(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    await _register(
        pool, "electric_vehicle_v1g", {"id": ocpp_id, "version": "1.6", "password_sha256": _hashed(PASSWORD)}
    )
    simulator = ChargerSimulator(url=url, charge_point_id=ocpp_id, password=PASSWORD, protocol="ocpp2.0.1")

    # The handshake completes without a subprotocol and the agent closes it before any OCPP message.
    with pytest.raises(UnacceptedProtocol):
        await simulator.connect()

    assert system.sessions == {}


async def test_a_charger_that_falls_silent_is_offline_within_a_heartbeat_interval_and_the_margin(
    pool: asyncpg.Pool,
    broker: Broker,
    availability_queue: str,
    central_system: tuple[CentralSystem, str],
) -> None:
    system, url = central_system
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    name = await _register(pool, "on_off_ev_charger", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)})
    simulator = ChargerSimulator(url=url, charge_point_id=ocpp_id, password=PASSWORD, meter_interval_s=3600)
    await simulator.connect()
    try:
        assert (await _availability_of(broker, availability_queue, name)).online is True
        session = await _session(system, name)
        # The link goes dead without a close: the charger reads nothing more, so it answers no ping either.
        simulator.stop_reading()
        offline = await _availability_of(broker, availability_queue, name)
    finally:
        await simulator.disconnect()

    assert offline.online is False
    assert offline.reason == "OCPP connection lost (no answer to the keepalive ping)"
    assert session.connected is False


def _action(name: str, mode: BatteryMode, *, setpoint_w: int | None = None, lasts_s: float = 600) -> DeviceAction:
    now = datetime.now(tz=UTC)
    return DeviceAction(
        device_name=name,
        mode=mode,
        power_mode=PowerMode.SETPOINT if setpoint_w is not None else None,
        setpoint_w=setpoint_w,
        issued_at=now,
        valid_until=now + timedelta(seconds=lasts_s),
    )


async def test_a_v1g_profile_is_accepted_applied_and_the_charger_falls_back_when_it_expires(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    name = await _register(
        pool, "electric_vehicle_v1g", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)}, max_power_kw=11
    )
    simulator = ChargerSimulator(
        url=url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        car=CarVisit(arrive_after_s=0.0, initial_soc_percentage=40.0),
        meter_interval_s=0.1,
        tick_s=0.05,
    )
    rated_w = 16 * 3 * 230.0
    async with simulator:
        session = await _session(system, name)
        # 5 kW for two seconds: accepted, and the charger delivers it (three phases: 7.2 A, above 6 A).
        outcome = await system.carry_out(_action(name, BatteryMode.CHARGE, setpoint_w=5000, lasts_s=2), _no_lookup)

        assert outcome is not None and outcome.applied, outcome
        assert outcome.applied_setpoint_w == 5000
        [profile] = simulator.state.profiles_received
        assert profile["charging_profile_purpose"] == "TxDefaultProfile"
        assert profile["valid_to"] is not None
        async with asyncio.timeout(WAIT_S):
            await session.wait_until(lambda current: _power(current) == pytest.approx(5000, abs=1))
            # The action ends, nobody renews the profile: at its validTo the charger is back at its rated power.
            await session.wait_until(lambda current: _power(current) == pytest.approx(rated_w, abs=1))
        assert simulator.state.limit is None


async def test_under_the_minimum_current_a_v1g_charger_is_switched_off(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    name = await _register(pool, "electric_vehicle_v1g", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)})
    async with ChargerSimulator(url=url, charge_point_id=ocpp_id, password=PASSWORD) as simulator:
        await _session(system, name)
        outcome = await system.carry_out(_action(name, BatteryMode.CHARGE, setpoint_w=3000), _no_lookup)

        assert outcome is not None and outcome.applied
        assert outcome.applied_setpoint_w == 0
        assert outcome.reason is not None and "minimum current" in outcome.reason
        assert simulator.state.limit is not None and simulator.state.limit.limit_w == 0


async def test_a_v2g_charger_on_ocpp_2_1_takes_a_discharge_setpoint(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    ocpp_id = f"V2G-{uuid.uuid4().hex[:6]}"
    name = await _register(pool, "electric_vehicle_v2g", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)})
    simulator = ChargerSimulator(
        url=url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        protocol="ocpp2.1",
        spec=ChargerSpec(v2g=True),
        car=None,  # it arrives once the test has seen that nothing is discharged without it
        meter_interval_s=0.1,
        tick_s=0.05,
    )
    async with simulator:
        session = await _session(system, name)
        # Before the car is plugged in there is nothing to discharge: the limit is 0, and the outcome says why.
        no_car = await system.carry_out(_action(name, BatteryMode.DISCHARGE, setpoint_w=7000), _no_lookup)
        assert no_car is not None and no_car.applied and no_car.applied_setpoint_w == 0
        assert no_car.reason == "no car plugged in: nothing to discharge"
        simulator.state.profiles_received.clear()
        simulator.car = CarVisit(arrive_after_s=0.0, initial_soc_percentage=80.0)
        async with asyncio.timeout(WAIT_S):
            await session.wait_until(lambda current: current.transaction_id is not None)
        outcome = await system.carry_out(_action(name, BatteryMode.DISCHARGE, setpoint_w=7000), _no_lookup)

        assert outcome is not None and outcome.applied, outcome
        assert outcome.applied_setpoint_w == 7000
        [profile] = simulator.state.profiles_received
        assert profile["charging_schedule"][0]["charging_schedule_period"][0]["operation_mode"] == "CentralSetpoint"
        async with asyncio.timeout(WAIT_S):
            await session.wait_until(lambda current: _power(current) == pytest.approx(-7000, abs=1))


async def test_a_charger_that_rejects_the_profile_yields_a_failed_outcome_with_its_reason(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    ocpp_id = f"V2G-{uuid.uuid4().hex[:6]}"
    name = await _register(
        pool, "electric_vehicle_v2g", {"id": ocpp_id, "version": "2.0.1", "password_sha256": _hashed(PASSWORD)}
    )
    simulator = ChargerSimulator(
        url=url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        protocol="ocpp2.0.1",
        spec=ChargerSpec(v2g=True),
        reject_profiles="schedule overlaps the site limit",
    )
    async with simulator:
        await _session(system, name)
        outcome = await system.carry_out(_action(name, BatteryMode.CHARGE, setpoint_w=7000), _no_lookup)

    assert outcome is not None and outcome.applied is False
    assert outcome.reason == (
        f"charger {name} rejected the charging profile (Rejected: Rejected, schedule overlaps the site limit)"
    )


async def test_an_action_for_a_registered_charger_that_is_not_connected_fails_and_a_battery_is_not_a_charger(
    pool: asyncpg.Pool, central_system: tuple[CentralSystem, str]
) -> None:
    system, _ = central_system
    name = await _register(pool, "on_off_ev_charger", {"id": f"CP-{uuid.uuid4().hex[:6]}"})

    outcome = await system.carry_out(
        _action(name, BatteryMode.CHARGE), lambda device_name: charger_named(pool, device_name)
    )
    not_a_charger = await system.carry_out(
        _action("some-battery", BatteryMode.CHARGE), lambda device_name: charger_named(pool, device_name)
    )

    assert outcome is not None and outcome.applied is False
    assert outcome.reason is not None and "is not connected" in outcome.reason
    assert not_a_charger is None


def _refused(status: int) -> float:
    return REGISTRY.get_sample_value("gridloop_ocpp_connections_refused_total", {"status": str(status)}) or 0.0


def _power(session: ChargerSession) -> float | None:
    return None if session.latest_reading is None else session.latest_reading.power_w


async def _no_lookup(name: str) -> None:
    raise AssertionError(f"a connected charger's action needs no registry lookup ({name})")


async def test_a_device_action_for_a_charger_reaches_it_through_the_agents_action_handler(
    pool: asyncpg.Pool, broker: Broker, central_system: tuple[CentralSystem, str]
) -> None:
    system, url = central_system
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    name = await _register(pool, "on_off_ev_charger", {"id": ocpp_id, "password_sha256": _hashed(PASSWORD)})
    outcome_queue = f"test.ocpp-outcome.{uuid.uuid4().hex[:10]}"
    await declare_queue(
        broker.channel,
        QueueSpec(outcome_queue, bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_OUTCOME),)),
    )
    action = _action(name, BatteryMode.CHARGE, setpoint_w=2000)
    delivery = Delivery(
        body=action.model_dump_json().encode(),
        headers={},
        routing_key=routing.device_action_key(name),
        exchange=routing.DEVICES_EXCHANGE,
        message_id=str(action.action_id),
        correlation_id=None,
        reply_to=None,
        attempt=1,
        redelivered=False,
    )
    async with (
        ChargerSimulator(url=url, charge_point_id=ocpp_id, password=PASSWORD) as simulator,
        ModbusBus(timeout_s=0.5) as bus,
    ):
        await _session(system, name)
        fleet = Fleet(pool=pool, bus=bus, publisher=broker.publisher, revert_timeout_s=60, refresh_interval_s=300.0)
        await fleet.refresh()
        handler = device_action_handler(
            fleet, broker.publisher, SystemClock(), (system, lambda device_name: charger_named(pool, device_name))
        )
        await handler(delivery)

        # An on/off charger asked for any charge runs at its rated power (16 A on three phases).
        assert simulator.state.limit is not None
        assert simulator.state.limit.limit_w == pytest.approx(16 * 3 * 230.0)
    queue = await broker.channel.get_queue(outcome_queue, ensure=False)
    async with queue.iterator() as messages, asyncio.timeout(WAIT_S):
        async for message in messages:
            await message.ack()
            outcome = DeviceOutcome.model_validate_json(message.body)
            break
    assert (outcome.action_id, outcome.applied, outcome.applied_setpoint_w) == (action.action_id, True, 11040)
    assert outcome.reason == "an on/off charger runs at 0 or 11040 W"
