"""The agent reads registry metadata through gridloop_common's DeviceMetadata: a device whose metadata the contract
refuses is not driven, is published unavailable with the field named, and an action for it fails with that reason
(``max_power_kw: 0`` used to be driven without any limit).

Real PostgreSQL (telemetry-ingest's schema) and RabbitMQ; the bad rows are written past the database's contract
trigger, as rows written before migration 0019 are.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from device_agent.fleet import Fleet
from device_agent.handlers import UNKNOWN_DEVICE_WAIT_S, device_action_handler
from device_agent.modbus.bus import ModbusBus
from device_agent.repository import load_devices
from gridloop_common.clock import SystemClock
from gridloop_common.contracts import BatteryMode, DeviceAction, DeviceAvailability, DeviceOutcome, routing
from gridloop_common.db import migrate_database, open_pool
from gridloop_common.messaging import Broker, Delivery, QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings

pytestmark = pytest.mark.connected

LONG_PERIOD_S = 300.0


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


async def _register_behind_the_contract(pool: asyncpg.Pool, name: str, metadata: dict[str, Any]) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL session_replication_role = replica")  # skips telemetry-ingest's trigger
        await connection.execute(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', 'TEST', $2::jsonb)",
            name,
            metadata,
        )


async def _bound_queue(broker: Broker, routing_key: str) -> str:
    name = f"test.metadata.{uuid.uuid4().hex[:10]}"
    await declare_queue(broker.channel, QueueSpec(name, bindings=((routing.DEVICES_EXCHANGE, routing_key),)))
    return name


async def _next_bodies(broker: Broker, queue_name: str, count: int) -> list[bytes]:
    queue = await broker.channel.get_queue(queue_name, ensure=False)
    bodies: list[bytes] = []
    async with queue.iterator() as messages, asyncio.timeout(10):
        async for message in messages:
            await message.ack()
            bodies.append(message.body)
            if len(bodies) == count:
                return bodies
    raise AssertionError("the queue closed early")


async def test_devices_with_a_bad_power_limit_are_not_driven_and_are_reported_naming_the_field(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    suffix = uuid.uuid4().hex[:8]
    zero, true = f"zero-{suffix}", f"true-{suffix}"
    address = {"host": "127.0.0.1", "port": 1, "unit_id": 1}  # never dialled: the device is refused first
    await _register_behind_the_contract(pool, zero, {"max_power_kw": 0, "modbus": address})
    await _register_behind_the_contract(pool, true, {"max_power_kw": True, "modbus": address})
    availability_queue = await _bound_queue(broker, routing.RoutingKeys.DEVICE_AVAILABILITY)
    outcome_queue = await _bound_queue(broker, routing.RoutingKeys.DEVICE_OUTCOME)

    async with ModbusBus(timeout_s=0.5) as bus:
        fleet = Fleet(
            pool=pool, bus=bus, publisher=broker.publisher, revert_timeout_s=60, refresh_interval_s=LONG_PERIOD_S
        )
        await fleet.refresh()

        assert fleet.control_loop(zero) is None and fleet.control_loop(true) is None
        assert zero not in {device.name for device in fleet.coordinators()}  # not polled either
        reports = [
            DeviceAvailability.model_validate_json(body) for body in await _next_bodies(broker, availability_queue, 2)
        ]
        by_device = {report.device_name: report for report in reports}
        for name in (zero, true):
            assert by_device[name].online is False
            assert by_device[name].reason is not None
            assert by_device[name].reason.startswith("invalid registry metadata: metadata.max_power_kw: ")
        assert (REGISTRY.get_sample_value("gridloop_agent_devices_invalid_metadata") or 0) >= 2

        action = DeviceAction(
            device_name=zero, mode=BatteryMode.DISCHARGE, setpoint_w=1000, issued_at=datetime.now(tz=UTC)
        )
        delivery = Delivery(
            body=action.model_dump_json().encode(),
            headers={},
            routing_key=routing.device_action_key(zero),
            exchange=routing.DEVICES_EXCHANGE,
            message_id=str(action.action_id),
            correlation_id=None,
            reply_to=None,
            attempt=1,
            redelivered=False,
        )
        # Refused at once: a device known to be unusable is not waited for like an unregistered one.
        async with asyncio.timeout(UNKNOWN_DEVICE_WAIT_S / 2):
            await device_action_handler(fleet, broker.publisher, SystemClock())(delivery)

    [body] = await _next_bodies(broker, outcome_queue, 1)
    outcome = DeviceOutcome.model_validate_json(body)
    assert (outcome.action_id, outcome.applied) == (action.action_id, False)
    assert outcome.reason is not None
    assert outcome.reason.startswith(
        f"device {zero!r} is not driven: invalid registry metadata: metadata.max_power_kw: "
    )

    read = await load_devices(pool)
    assert read is not None
    assert {device.name for device in read.devices}.isdisjoint({zero, true})
    refused = {device.name: device.field for device in read.unusable}
    assert (refused[zero], refused[true]) == ("metadata.max_power_kw", "metadata.max_power_kw")
