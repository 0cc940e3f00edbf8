"""The optimizer's device plans carried out by the scheduler, against the real database and broker.

A plan's steps are controls of source ``plan``: each expires at its end, an upstream command outranks them while
it runs, a newer plan supersedes an older one, and what cannot apply is dead-lettered with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gridloop_common.contracts import Command, DeviceAction, DevicePlan, PlanKind, PlanStep, routing
from gridloop_common.messaging import Broker, Delivery, PoisonMessage, QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_common.testing import FakeClock
from scheduler.commands import CommandReceiver
from scheduler.dispatch import Dispatcher
from scheduler.handlers import device_plan_handler
from scheduler.repository import CommandRepository


def _now() -> datetime:
    return datetime.now(tz=UTC).replace(microsecond=0)


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    settings = AmqpSettings(amqp_url=amqp_url, amqp_prefetch=50, amqp_confirm_timeout_s=5.0)
    async with open_broker(settings, client_name=f"test-{uuid.uuid4().hex[:6]}", url=amqp_url) as opened:
        yield opened


async def _add_device(pool: asyncpg.Pool, *, device_type: str = "bess") -> str:
    name = f"battery-{uuid.uuid4().hex[:10]}"
    metadata: dict[str, Any] = {}
    if device_type == "bess":
        metadata = {"max_power_kw": 5, "capacity_kwh": 13.5}
    elif "ev" in device_type:
        metadata = {"max_power_kw": 11, "phases": 3, "min_current_a": 6, "ocpp": {"id": name}}
    await pool.execute(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, $2, 'TEST', $3::jsonb)",
        name,
        device_type,
        metadata,
    )
    return name


async def _action_queue(broker: Broker, device: str) -> str:
    name = f"test.actions.{uuid.uuid4().hex[:10]}"
    await declare_queue(
        broker.channel, QueueSpec(name, bindings=((routing.DEVICES_EXCHANGE, routing.device_action_key(device)),))
    )
    return name


async def _drain(broker: Broker, queue_name: str) -> list[DeviceAction]:
    queue = await broker.channel.get_queue(queue_name, ensure=False)
    actions = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        actions.append(DeviceAction.model_validate_json(message.body))
    return actions


def _plan(device: str, *powers: int, start: datetime, issued_at: datetime, minutes: int = 15) -> DevicePlan:
    return DevicePlan(
        plan_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        kind=PlanKind.TARIFF,
        device_name=device,
        issued_at=issued_at,
        steps=[
            PlanStep(
                starts_at=start + timedelta(minutes=minutes * index),
                ends_at=start + timedelta(minutes=minutes * (index + 1)),
                power_w=power,
            )
            for index, power in enumerate(powers)
        ],
    )


def _delivery(body: bytes | DevicePlan) -> Delivery:
    return Delivery(
        body=body.model_dump_json().encode() if isinstance(body, DevicePlan) else body,
        headers={},
        routing_key=routing.device_plan_key("any"),
        exchange=routing.DEVICES_EXCHANGE,
        message_id=str(uuid.uuid4()),
        correlation_id=None,
        reply_to=None,
        attempt=1,
        redelivered=False,
    )


def _upstream_command(device: str, *, now: datetime, minutes: int) -> Command:
    data: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "event_id": None,
        "device_id": device,
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(minutes=minutes)).isoformat(),
        "duration_s": minutes * 60,
        "is_preparatory_action": False,
        "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 4000},
        "status": "OK",
        "device_status": "PENDING",
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }
    return Command.model_validate(data)


async def _states(pool: asyncpg.Pool, device: str) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT source, state, count(*) AS n FROM scheduler.commands WHERE device_id = $1 GROUP BY 1, 2", device
    )
    return {f"{row['source']}/{row['state']}": row["n"] for row in rows}


async def test_a_plan_is_followed_step_by_step_outranked_by_an_upstream_command_and_expires_after_its_last_step(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device = await _add_device(pool)
    queue = await _action_queue(broker, device)
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    handle = device_plan_handler(repository, clock)
    # Charge in the cheap first half hour, discharge in the dear second.
    plan = _plan(device, 3000, 3000, -2500, -2500, start=now, issued_at=now)

    await handle(_delivery(plan))
    await dispatcher.fire_due()
    [first] = await _drain(broker, queue)
    assert (first.mode, first.setpoint_w) == ("CHARGE", 3000)
    assert first.valid_until == plan.steps[0].ends_at + timedelta(seconds=5)  # the step expires by itself

    # An upstream command in the middle of the discharge outranks the plan, which resumes when it ends.
    clock.set(now + timedelta(minutes=35))
    command = _upstream_command(device, now=clock.now(), minutes=10)
    await CommandReceiver(repository=repository, clock=clock).receive(
        command, event_type="command.created", correlation_id=None
    )
    await dispatcher.fire_due()
    actions = await _drain(broker, queue)
    assert [(action.command_id, action.mode, action.setpoint_w) for action in actions][-1] == (
        command.id,
        "DISCHARGE",
        4000,
    )
    clock.set(now + timedelta(minutes=45))
    await dispatcher.fire_due()
    [resumed] = await _drain(broker, queue)
    assert (resumed.mode, resumed.setpoint_w) == ("DISCHARGE", 2500)
    assert resumed.command_id is not None and resumed.command_id != command.id

    # After the last step, nothing of the plan is in force: the device returns to its default.
    clock.set(now + timedelta(minutes=60))
    await dispatcher.fire_due()
    [after] = await _drain(broker, queue)
    assert (after.mode, after.command_id, after.valid_until) == ("SELF_CONSUMPTION", None, None)
    assert await _states(pool, device) == {"plan/completed": 4, "upstream_command/completed": 1}
    acks = await pool.fetchval(
        "SELECT count(*) FROM scheduler.ack_outbox o JOIN scheduler.commands c USING (command_id)"
        " WHERE c.device_id = $1 AND c.source = 'plan'",
        device,
    )
    assert acks == 0


async def test_a_newer_plan_supersedes_the_older_and_a_late_older_one_or_a_redelivery_changes_nothing(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device = await _add_device(pool)
    queue = await _action_queue(broker, device)
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    handle = device_plan_handler(repository, clock)
    older = _plan(device, 1000, 1000, start=now, issued_at=now)
    newer = _plan(device, -2000, start=now + timedelta(minutes=5), issued_at=now + timedelta(minutes=5))
    await handle(_delivery(older))
    await dispatcher.fire_due()
    assert [(action.mode, action.setpoint_w) for action in await _drain(broker, queue)] == [("CHARGE", 1000)]

    clock.set(now + timedelta(minutes=5))
    await handle(_delivery(newer))
    await handle(_delivery(newer))  # redelivered
    await handle(_delivery(_plan(device, 500, start=now, issued_at=now + timedelta(minutes=1))))  # late, older
    await dispatcher.fire_due()
    [replaced] = await _drain(broker, queue)
    assert (replaced.mode, replaced.setpoint_w) == ("DISCHARGE", 2000)
    assert await _states(pool, device) == {"plan/canceled": 2, "plan/active": 1}
    plans = await pool.fetchval("SELECT count(*) FROM scheduler.device_plans WHERE device_id = $1", device)
    assert plans == 2
    history = await pool.fetch(
        "SELECT h.kind FROM scheduler.command_history h JOIN scheduler.commands c USING (command_id)"
        " WHERE c.device_id = $1 AND c.state = 'canceled' ORDER BY h.id",
        device,
    )
    assert [row["kind"] for row in history].count("canceled") == 2


async def test_a_plan_ending_before_a_newer_one_starts_leaves_the_device_to_its_default(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device = await _add_device(pool)
    queue = await _action_queue(broker, device)
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    handle = device_plan_handler(repository, clock)
    await handle(_delivery(_plan(device, 1000, start=now, issued_at=now, minutes=60)))
    await dispatcher.fire_due()
    await _drain(broker, queue)

    # The new plan starts in an hour: the old one's step is superseded now, so the device is left to its default.
    clock.set(now + timedelta(minutes=1))
    await handle(_delivery(_plan(device, -1000, start=now + timedelta(hours=1), issued_at=clock.now())))
    await dispatcher.fire_due()
    [stop] = await _drain(broker, queue)
    assert (stop.mode, stop.command_id) == ("SELF_CONSUMPTION", None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "cannot be read"),
        (b'{"plan_id": "x"}', "invalid device plan"),
        (
            b'{"plan_id": "00000000-0000-0000-0000-000000000001", "run_id": "00000000-0000-0000-0000-000000000002",'
            b' "kind": "mpc", "device_name": "d", "issued_at": "2026-01-01T00:00:00Z",'
            b' "steps": [{"starts_at": "2026-01-01T01:00:00Z", "ends_at": "2026-01-01T00:00:00Z", "power_w": 1}]}',
            "steps.0: Value error, ends_at must be after starts_at",
        ),
    ],
)
async def test_an_invalid_plan_is_dead_lettered_with_the_field_named(
    pool: asyncpg.Pool, body: bytes, reason: str
) -> None:
    handle = device_plan_handler(CommandRepository(pool), FakeClock(_now()))
    with pytest.raises(PoisonMessage, match=reason):
        await handle(_delivery(body))
    assert await pool.fetchval("SELECT count(*) FROM scheduler.device_plans") == 0


@pytest.mark.parametrize("device_type", ["meter", None])
async def test_a_plan_for_a_device_that_cannot_be_planned_is_dead_lettered(
    pool: asyncpg.Pool, device_type: str | None
) -> None:
    now = _now()
    device = await _add_device(pool, device_type=device_type) if device_type else "no-such-device"
    handle = device_plan_handler(CommandRepository(pool), FakeClock(now))
    with pytest.raises(PoisonMessage, match="refused"):
        await handle(_delivery(_plan(device, 1000, start=now, issued_at=now)))
    assert await pool.fetchval("SELECT count(*) FROM scheduler.commands WHERE device_id = $1", device) == 0


async def test_a_v2g_charger_plan_becomes_charge_standby_and_discharge_setpoints_step_by_step(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    """An EV plan step is carried out like a battery's: CHARGE or DISCHARGE with the setpoint in W (what the
    device-agent's charger path sends as the charging profile's limit), STANDBY for 0."""
    now = _now()
    device = await _add_device(pool, device_type="electric_vehicle_v2g")
    queue = await _action_queue(broker, device)
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    await device_plan_handler(repository, clock)(_delivery(_plan(device, 7000, 0, -5000, start=now, issued_at=now)))
    seen = []
    for minutes in (0, 15, 30):
        clock.set(now + timedelta(minutes=minutes))
        await dispatcher.fire_due()
        [action] = await _drain(broker, queue)
        seen.append((action.mode, action.power_mode, action.setpoint_w))
    assert seen == [("CHARGE", "SETPOINT", 7000), ("STANDBY", None, None), ("DISCHARGE", "SETPOINT", 5000)]


async def test_a_v1g_charger_plan_with_a_discharging_step_is_dead_lettered(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_device(pool, device_type="electric_vehicle_v1g")
    handle = device_plan_handler(CommandRepository(pool), FakeClock(now))
    with pytest.raises(PoisonMessage, match="cannot discharge"):
        await handle(_delivery(_plan(device, 4140, -4140, start=now, issued_at=now)))
    assert await pool.fetchval("SELECT count(*) FROM scheduler.commands WHERE device_id = $1", device) == 0
