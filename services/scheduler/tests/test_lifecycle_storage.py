"""The lifecycle's writes against the real database (and, for dispatch, the real broker).

Receiving a version, firing timers, recording outcomes and acknowledgement attempts are each a fixed number
of statements; these tests check that what those statements leave behind is the lifecycle of docs/design.md §3.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from gridloop_common.contracts import Command, DeviceAction, DeviceOutcome, DeviceResyncRequest, routing
from gridloop_common.messaging import Broker, PublishError, QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_common.testing import FakeClock
from gridloop_simulators.upstream import UpstreamSimulator
from scheduler import lifecycle, planning
from scheduler.acknowledgements import AckSender
from scheduler.commands import CommandReceiver
from scheduler.dispatch import Dispatcher
from scheduler.handlers import record_outcome
from scheduler.lifecycle import CommandLook
from scheduler.planning import ControlSource
from scheduler.repository import CommandRepository, UpstreamRecord


def _now() -> datetime:
    return datetime.now(tz=UTC).replace(microsecond=0)


def _command(device_id: str, *, now: datetime, **changes: Any) -> Command:
    battery = {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000}
    battery.update(changes.pop("battery", {}))
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "event_id": None,
        "device_id": device_id,
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        "duration_s": 3600,
        "is_preparatory_action": False,
        "battery_commands": battery,
        "status": "OK",
        "device_status": "PENDING",
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }
    base.update(changes)
    return Command.model_validate(base)


def _newer(command: Command, *, seconds: int = 1, **changes: Any) -> Command:
    data = command.model_dump(mode="json")
    data["updated_at"] = (command.updated_at + timedelta(seconds=seconds)).isoformat()
    data.update(changes)
    return Command.model_validate(data)


async def _add_battery(pool: asyncpg.Pool, *, max_power_kw: float = 5) -> str:
    name = f"battery-{uuid.uuid4().hex[:10]}"
    await pool.execute(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', 'TEST', $2::jsonb)",
        name,
        {"max_power_kw": max_power_kw, "capacity_kwh": 13.5},
    )
    return name


async def _history(pool: asyncpg.Pool, command_id: UUID) -> list[str]:
    rows = await pool.fetch("SELECT kind FROM scheduler.command_history WHERE command_id = $1 ORDER BY id", command_id)
    return [row["kind"] for row in rows]


async def _acks(pool: asyncpg.Pool, command_id: UUID) -> list[tuple[str, str | None]]:
    rows = await pool.fetch(
        "SELECT device_status, device_status_reason FROM scheduler.ack_outbox WHERE command_id = $1 ORDER BY id",
        command_id,
    )
    return [(row["device_status"], row["device_status_reason"]) for row in rows]


async def _timers(pool: asyncpg.Pool, command_id: UUID, *, fired: bool = False) -> list[tuple[str, datetime]]:
    rows = await pool.fetch(
        "SELECT kind, due_at FROM scheduler.timers WHERE command_id = $1 AND (fired_at IS NOT NULL) = $2"
        " ORDER BY due_at, kind",
        command_id,
        fired,
    )
    return [(row["kind"], row["due_at"]) for row in rows]


async def _assert_applied_once(pool: asyncpg.Pool, command: Command) -> None:
    """One received version's effect: its history, one OK ack, its start and end timers."""
    assert await _history(pool, command.id) == ["received", "scheduled"]
    assert await _acks(pool, command.id) == [("OK", None)]
    assert len(await _timers(pool, command.id)) == 2


async def test_a_new_command_is_scheduled_with_its_timers_history_and_ok_ack(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now, starts_at=(now + timedelta(minutes=5)).isoformat())
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))

    assert await receiver.receive(command, event_type="command.created", correlation_id="trace-1") == "new"

    row = await pool.fetchrow("SELECT * FROM scheduler.commands WHERE command_id = $1", command.id)
    assert row is not None
    assert (row["state"], row["device_id"], row["correlation_id"]) == ("scheduled", device, "trace-1")
    assert row["starts_at"] == command.starts_at and row["ends_at"] == command.ends_at
    assert row["command"] == command.model_dump(mode="json")
    assert await _timers(pool, command.id) == [("start", command.starts_at), ("end", command.ends_at)]
    assert await _history(pool, command.id) == ["received", "scheduled"]
    assert await _acks(pool, command.id) == [("OK", None)]
    versions = await pool.fetchval("SELECT count(*) FROM scheduler.command_versions WHERE command_id = $1", command.id)
    assert versions == 1


async def test_a_late_arrival_starts_at_once(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now, starts_at=(now - timedelta(minutes=10)).isoformat())
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))

    assert await receiver.receive(command, event_type="command.created", correlation_id=None) == "new"

    assert await _timers(pool, command.id) == [("start", now), ("end", command.ends_at)]


async def test_a_redelivered_version_changes_nothing(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now)
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))
    await receiver.receive(command, event_type="command.created", correlation_id=None)

    assert await receiver.receive(command, event_type="command.created", correlation_id=None) == "duplicate"

    await _assert_applied_once(pool, command)


async def test_fifty_concurrent_deliveries_of_one_version_have_one_effect(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now)
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))

    results = await asyncio.gather(
        *(receiver.receive(command, event_type="command.created", correlation_id=None) for _ in range(50))
    )

    assert sorted(results) == ["duplicate"] * 49 + ["new"]
    await _assert_applied_once(pool, command)


async def test_the_carrying_event_is_stored_once_by_the_first_read(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now)
    envelope = {"event_type": "command.created", "event_object": command.model_dump(mode="json")}
    record = UpstreamRecord(event_key="msg_once", event_type="command.created", envelope=envelope, correlation_id="t")
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))

    results = await asyncio.gather(
        *(receiver.receive(command, event_type="command.created", correlation_id="t", record=record) for _ in range(10))
    )

    assert sorted(results) == ["duplicate"] * 9 + ["new"]
    rows = await pool.fetch("SELECT event_type, correlation_id, envelope FROM scheduler.upstream_events")
    assert [(row["event_type"], row["correlation_id"], row["envelope"]) for row in rows] == [
        ("command.created", "t", envelope)
    ]


async def test_a_stale_version_is_counted_and_ignored(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    first = _command(device, now=now)
    second = _newer(
        first, seconds=60, battery_commands={"mode": "CHARGE", "power_mode": "SETPOINT", "setpoint_w": 2000}
    )
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))
    assert await receiver.receive(second, event_type="command.updated", correlation_id=None) == "new"

    assert await receiver.receive(first, event_type="command.created", correlation_id=None) == "stale"

    row = await pool.fetchrow(
        "SELECT updated_at, stale_versions_ignored, command FROM scheduler.commands WHERE command_id = $1", first.id
    )
    assert row is not None
    assert row["updated_at"] == second.updated_at
    assert row["stale_versions_ignored"] == 1
    assert row["command"]["battery_commands"]["mode"] == "CHARGE"
    assert await _history(pool, first.id) == ["received", "scheduled", "stale"]
    assert await _acks(pool, first.id) == [("OK", None)]
    # Both versions are kept, the stale one too.
    versions = await pool.fetchval("SELECT count(*) FROM scheduler.command_versions WHERE command_id = $1", first.id)
    assert versions == 2


async def test_a_newer_version_replaces_the_unfired_timers(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    first = _command(device, now=now, starts_at=(now + timedelta(minutes=5)).isoformat())
    later_start = now + timedelta(minutes=20)
    second = _newer(first, starts_at=later_start.isoformat())
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))
    await receiver.receive(first, event_type="command.created", correlation_id=None)

    assert await receiver.receive(second, event_type="command.updated", correlation_id=None) == "updated"

    assert await _timers(pool, first.id) == [("start", later_start), ("end", first.ends_at)]
    assert await _acks(pool, first.id) == [("OK", None), ("OK", None)]


async def test_unknown_and_over_limit_commands_fail_with_a_reason(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool, max_power_kw=2)
    unknown = _command("no-such-battery", now=now)
    too_strong = _command(device, now=now, battery={"setpoint_w": 4000})
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))

    assert await receiver.receive(unknown, event_type="command.created", correlation_id=None) == "failed"
    assert await receiver.receive(too_strong, event_type="command.created", correlation_id=None) == "failed"

    [(status, reason)] = await _acks(pool, unknown.id)
    assert status == "FAILED" and reason is not None and "unknown device 'no-such-battery'" in reason
    [(status, reason)] = await _acks(pool, too_strong.id)
    assert status == "FAILED" and reason is not None and "beyond the device's limit of 2000 W" in reason
    state = await pool.fetchval("SELECT state FROM scheduler.commands WHERE command_id = $1", too_strong.id)
    assert state == "failed"
    assert await _timers(pool, too_strong.id) == []


async def test_a_running_command_whose_new_version_fails_leaves_the_device(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool, max_power_kw=5)
    first = _command(device, now=now)
    refused = _newer(first, battery_commands={"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 9000})
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))
    await receiver.receive(first, event_type="command.created", correlation_id=None)

    assert await receiver.receive(refused, event_type="command.updated", correlation_id=None) == "failed"

    assert await _timers(pool, first.id) == [("stop", now)]


async def test_a_cancellation_sets_a_stop_timer_and_waits_for_it_to_ack(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    first = _command(device, now=now)
    canceled = _newer(first, status="CANCELED")
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))
    await receiver.receive(first, event_type="command.created", correlation_id=None)

    assert await receiver.receive(canceled, event_type="command.updated", correlation_id=None) == "canceled"

    assert await _timers(pool, first.id) == [("stop", now)]
    assert await _acks(pool, first.id) == [("OK", None)]  # the second OK comes when the stop is sent
    assert await _history(pool, first.id) == ["received", "scheduled", "received", "canceled"]


async def test_a_decision_on_what_has_changed_since_is_not_written(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now)
    repository = CommandRepository(pool)
    seen_before = await repository.look(command)
    await CommandReceiver(repository=repository, clock=FakeClock(now)).receive(
        _newer(command, seconds=-30), event_type="command.created", correlation_id=None
    )

    _, plan, _ = lifecycle.plan_version(
        command, seen_before, event_type="command.created", correlation_id=None, now=now
    )
    written = await repository.store(plan)

    assert written == "changed"
    assert await _history(pool, command.id) == ["received", "scheduled"]
    assert len(await _acks(pool, command.id)) == 1
    assert await repository.look(command) == CommandLook(
        version_known=False,
        stored_updated_at=command.updated_at - timedelta(seconds=30),
        stored_state="scheduled",
        device=seen_before.device,
    )


async def test_concurrent_versions_of_one_command_end_with_the_newest(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    first = _command(device, now=now)
    versions = [_newer(first, seconds=seconds) for seconds in range(20)]
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now))

    results = await asyncio.gather(
        *(receiver.receive(version, event_type="command.updated", correlation_id=None) for version in versions)
    )

    assert results.count("new") == 1
    stored = await pool.fetchval("SELECT updated_at FROM scheduler.commands WHERE command_id = $1", first.id)
    assert stored == versions[-1].updated_at
    kept = await pool.fetchval("SELECT count(*) FROM scheduler.command_versions WHERE command_id = $1", first.id)
    assert kept == 20
    # Every version was either applied (one OK ack each) or judged stale against a newer one.
    assert len(await _acks(pool, first.id)) + results.count("stale") == 20


# -- dispatch, against the real broker ---------------------------------------------------------------------


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    settings = AmqpSettings(amqp_url=amqp_url, amqp_prefetch=50, amqp_confirm_timeout_s=5.0)
    async with open_broker(settings, client_name=f"test-{uuid.uuid4().hex[:6]}", url=amqp_url) as opened:
        yield opened


async def _action_queue(broker: Broker, devices: list[str]) -> str:
    name = f"test.actions.{uuid.uuid4().hex[:10]}"
    bindings = tuple((routing.DEVICES_EXCHANGE, routing.device_action_key(device)) for device in devices)
    await declare_queue(broker.channel, QueueSpec(name, bindings=bindings))
    return name


async def _drain(broker: Broker, queue_name: str) -> list[DeviceAction]:
    """Every action waiting on the queue (all were confirmed by the broker before fire_due returned)."""
    queue = await broker.channel.get_queue(queue_name, ensure=False)
    actions = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        actions.append(DeviceAction.model_validate_json(message.body))
    return actions


async def test_two_dispatchers_fire_every_due_timer_once(pool: asyncpg.Pool, broker: Broker) -> None:
    now = _now()
    devices = [await _add_battery(pool) for _ in range(30)]
    queue = await _action_queue(broker, devices)
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    receiver = CommandReceiver(repository=repository, clock=clock)
    commands = [_command(device, now=now, battery={"setpoint_w": 1000 + index}) for index, device in enumerate(devices)]
    for command in commands:
        await receiver.receive(command, event_type="command.created", correlation_id=f"trace-{command.id}")
    first, second = (
        Dispatcher(repository=repository, publisher=broker.publisher, clock=clock, batch_size=7) for _ in range(2)
    )

    async def fire_until_idle(dispatcher: Dispatcher) -> int:
        fired = 0
        while (count := await dispatcher.fire_due()) > 0:
            fired += count
        return fired

    fired = await asyncio.gather(fire_until_idle(first), fire_until_idle(second))

    assert sum(fired) == 30  # the start timers; the end timers are an hour away
    actions = await _drain(broker, queue)
    assert sorted((action.device_name, action.setpoint_w) for action in actions) == sorted(
        (command.device_id, command.battery_commands.setpoint_w) for command in commands
    )
    assert len({action.action_id for action in actions}) == 30
    ids = [command.id for command in commands]
    states = await pool.fetch("SELECT state FROM scheduler.commands WHERE command_id = ANY($1::uuid[])", ids)
    assert [row["state"] for row in states] == ["active"] * 30
    for command in commands:
        assert await _history(pool, command.id) == ["received", "scheduled", "active", "dispatched"]
        assert [kind for kind, _ in await _timers(pool, command.id, fired=True)] == ["start"]


async def test_the_newest_command_wins_and_a_cancellation_returns_to_default_with_an_ack(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device = await _add_battery(pool)
    queue = await _action_queue(broker, [device])
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    receiver = CommandReceiver(repository=repository, clock=clock)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    older = _command(device, now=now, battery={"setpoint_w": 1000})
    newer = _command(device, now=now, battery={"setpoint_w": 2000}, created_at=(now + timedelta(seconds=1)).isoformat())
    await receiver.receive(older, event_type="command.created", correlation_id=None)
    await receiver.receive(newer, event_type="command.created", correlation_id=None)

    assert await dispatcher.fire_due() == 2
    [action] = await _drain(broker, queue)
    assert (action.command_id, action.setpoint_w) == (newer.id, 2000)
    states = dict(await pool.fetch("SELECT command_id, state FROM scheduler.commands WHERE device_id = $1", device))
    assert states == {older.id: "scheduled", newer.id: "active"}

    clock.set(now + timedelta(minutes=1))
    await receiver.receive(_newer(newer, status="CANCELED"), event_type="command.updated", correlation_id=None)
    assert await dispatcher.fire_due() == 1
    [back] = await _drain(broker, queue)
    assert (back.command_id, back.setpoint_w) == (older.id, 1000)  # the older command is in force again
    assert await _acks(pool, newer.id) == [("OK", None), ("OK", None)]
    assert (await _history(pool, newer.id))[-2:] == ["dispatched", "awaiting release"]


async def test_outcomes_are_recorded_once_and_a_failure_fails_the_command(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now)
    repository = CommandRepository(pool)
    await CommandReceiver(repository=repository, clock=FakeClock(now)).receive(
        command, event_type="command.created", correlation_id=None
    )
    applied = DeviceOutcome(
        action_id=uuid.uuid4(),
        command_id=command.id,
        device_name=device,
        applied=True,
        applied_setpoint_w=3000,
        observed_at=now,
    )
    failed = DeviceOutcome(
        action_id=uuid.uuid4(),
        command_id=command.id,
        device_name=device,
        applied=False,
        reason="read back 0 W after writing 3000 W",
        observed_at=now,
    )

    assert await record_outcome(repository, applied) is True
    assert await record_outcome(repository, applied) is False
    assert await record_outcome(repository, failed) is True

    row = await pool.fetchrow(
        "SELECT state, state_reason, last_outcome FROM scheduler.commands WHERE command_id = $1", command.id
    )
    assert row is not None
    assert (row["state"], row["state_reason"]) == ("failed", "read back 0 W after writing 3000 W")
    assert row["last_outcome"] == json.loads(failed.model_dump_json())
    assert await _acks(pool, command.id) == [("OK", None), ("FAILED", "read back 0 W after writing 3000 W")]
    assert await _history(pool, command.id) == ["received", "scheduled", "outcome", "outcome"]
    stored = await pool.fetchval("SELECT count(*) FROM scheduler.device_outcomes WHERE command_id = $1", command.id)
    assert stored == 2


async def test_one_pass_of_acks_records_deliveries_and_failures(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    commands = [_command(device, now=now) for _ in range(4)]
    repository = CommandRepository(pool)
    receiver = CommandReceiver(repository=repository, clock=FakeClock(now))
    async with UpstreamSimulator() as upstream, aiohttp.ClientSession() as session:
        for command in commands:
            upstream.add_command(command.model_dump(mode="json"), notify=False)
            await receiver.receive(command, event_type="command.created", correlation_id=None)
        upstream.fail_next(2)
        sender = AckSender(
            repository=repository,
            session=session,
            upstream_url=upstream.url,
            path_template="/v1/commands/{id}",
            clock=FakeClock(datetime.now(tz=UTC) + timedelta(seconds=1)),
        )

        assert await sender.deliver_due() == 4

        answered = {ack["command_id"]: ack["status_code"] for ack in upstream.acks}
    assert sorted(answered.values()) == [200, 200, 503, 503]
    rows = await pool.fetch(
        "SELECT command_id, attempts, delivered_at, last_error, next_attempt_at FROM scheduler.ack_outbox"
    )
    assert len(rows) == 4
    for row in rows:
        assert row["attempts"] == 1
        if answered[str(row["command_id"])] == 503:
            assert row["delivered_at"] is None
            assert row["last_error"].startswith("HTTP 503")
            assert row["next_attempt_at"] > now
            assert (await _history(pool, row["command_id"]))[-1] == "scheduled"
        else:
            assert row["delivered_at"] is not None and row["last_error"] is None
            assert (await _history(pool, row["command_id"]))[-1] == "acknowledged"


async def test_a_path_prefix_of_the_upstream_url_is_kept(pool: asyncpg.Pool) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now)
    await CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(now)).receive(
        command, event_type="command.created", correlation_id=None
    )
    async with UpstreamSimulator() as upstream, aiohttp.ClientSession() as session:
        upstream.add_command(command.model_dump(mode="json"), notify=False)
        sender = AckSender(
            repository=CommandRepository(pool),
            session=session,
            upstream_url=f"{upstream.url}/behind-a-proxy/",
            path_template="/v1/commands/{id}",
            clock=FakeClock(datetime.now(tz=UTC) + timedelta(seconds=1)),
        )

        assert await sender.deliver_due() == 1

        # The simulator serves /v1/commands/{id} only: the prefixed path reached it and was not found.
        assert upstream.acks == []
    last_error = await pool.fetchval("SELECT last_error FROM scheduler.ack_outbox WHERE command_id = $1", command.id)
    assert last_error.startswith("HTTP 404")


async def test_a_pass_whose_publish_fails_records_nothing_and_the_next_pass_fires(
    pool: asyncpg.Pool, amqp_url: str, broker: Broker
) -> None:
    now = _now()
    device = await _add_battery(pool)
    queue = await _action_queue(broker, [device])
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    command = _command(device, now=now)
    await CommandReceiver(repository=repository, clock=clock).receive(
        command, event_type="command.created", correlation_id=None
    )
    settings = AmqpSettings(amqp_url=amqp_url, amqp_prefetch=50, amqp_confirm_timeout_s=1.0)
    async with open_broker(settings, client_name="test-closed", url=amqp_url) as closed:
        pass  # its channel is closed once the block exits

    with pytest.raises(PublishError):
        await Dispatcher(repository=repository, publisher=closed.publisher, clock=clock).fire_due()

    assert await _timers(pool, command.id, fired=True) == []
    assert await _history(pool, command.id) == ["received", "scheduled"]
    assert await Dispatcher(repository=repository, publisher=broker.publisher, clock=clock).fire_due() == 1
    [action] = await _drain(broker, queue)
    assert action.command_id == command.id
    assert await _history(pool, command.id) == ["received", "scheduled", "active", "dispatched"]


# -- continuity: cancellations acknowledged once released, hand-overs, resync (issue 14 P1, P2, P7) ---------


async def _cancel_running(
    pool: asyncpg.Pool, broker: Broker, *, revert_timeout_s: float = 60
) -> tuple[Command, DeviceAction, FakeClock, UUID]:
    """A command started on its device, then cancelled and its stop dispatched; returns the stop's action."""
    now = _now()
    device = await _add_battery(pool)
    queue = await _action_queue(broker, [device])
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    receiver = CommandReceiver(repository=repository, clock=clock)
    dispatcher = Dispatcher(
        repository=repository, publisher=broker.publisher, clock=clock, revert_timeout_s=revert_timeout_s
    )
    command = _command(device, now=now)
    await receiver.receive(command, event_type="command.created", correlation_id=None)
    assert await dispatcher.fire_due() == 1
    await _drain(broker, queue)
    clock.set(now + timedelta(minutes=1))
    await receiver.receive(_newer(command, status="CANCELED"), event_type="command.canceled", correlation_id=None)
    assert await dispatcher.fire_due() == 1
    [stop] = await _drain(broker, queue)
    assert stop.mode == "SELF_CONSUMPTION" and stop.command_id is None
    return command, stop, clock, command.id


async def _deliver_acks(pool: asyncpg.Pool, *, at: datetime, upstream: UpstreamSimulator) -> list[str]:
    """One pass of the ack sender at ``at``; the device_status of every PATCH the upstream accepted."""
    async with aiohttp.ClientSession() as session:
        sender = AckSender(
            repository=CommandRepository(pool),
            session=session,
            upstream_url=upstream.url,
            path_template="/v1/commands/{id}",
            clock=FakeClock(at),
        )
        await sender.deliver_due()
    return [ack["device_status"] for ack in upstream.acks if ack["status_code"] == 200]


async def test_a_cancellation_is_acknowledged_once_the_agent_confirms_the_releasing_write(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    command, stop, clock, command_id = await _cancel_running(pool, broker)
    repository = CommandRepository(pool)
    async with UpstreamSimulator() as upstream:
        upstream.add_command(command.model_dump(mode="json"), notify=False)
        later = datetime.now(tz=UTC) + timedelta(seconds=1)

        # The stop is published, but nothing says the device let go yet: only the first OK goes up.
        assert await _deliver_acks(pool, at=later, upstream=upstream) == ["OK"]
        assert await _deliver_acks(pool, at=later, upstream=upstream) == ["OK"]
        failed = DeviceOutcome(
            action_id=stop.action_id,
            device_name=stop.device_name,
            applied=False,
            reason="device battery is offline: timed out",
            observed_at=clock.now(),
        )
        await record_outcome(repository, failed)
        assert await _deliver_acks(pool, at=later, upstream=upstream) == ["OK"]

        released = DeviceOutcome(
            action_id=stop.action_id, device_name=stop.device_name, applied=True, observed_at=clock.now()
        )
        await record_outcome(repository, released)
        assert await _deliver_acks(pool, at=later, upstream=upstream) == ["OK", "OK"]
    history = await _history(pool, command_id)
    assert history[-4:] == ["awaiting release", "acknowledged", "released", "acknowledged"]


async def test_a_cancellation_made_while_the_agent_was_away_is_acknowledged_once_its_resync_answer_is_written(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    command, stop, clock, command_id = await _cancel_running(pool, broker)
    repository = CommandRepository(pool)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    # The agent was down when the stop went out; back, it asks for the device's current action.
    answer = await dispatcher.resync(
        DeviceResyncRequest(device_name=stop.device_name, reason="agent started", requested_at=clock.now())
    )
    async with UpstreamSimulator() as upstream:
        upstream.add_command(command.model_dump(mode="json"), notify=False)
        later = datetime.now(tz=UTC) + timedelta(seconds=1)
        assert await _deliver_acks(pool, at=later, upstream=upstream) == ["OK"]

        written = DeviceOutcome(
            action_id=answer.action_id, device_name=answer.device_name, applied=True, observed_at=clock.now()
        )
        await record_outcome(repository, written)

        assert answer.mode == "SELF_CONSUMPTION"
        assert await _deliver_acks(pool, at=later, upstream=upstream) == ["OK", "OK"]
    assert "released" in await _history(pool, command_id)


async def test_without_a_confirmation_the_cancellation_is_acknowledged_once_the_revert_timer_has_run_out(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    command, _, clock, _ = await _cancel_running(pool, broker, revert_timeout_s=20)
    stop_sent_at = clock.now()
    async with UpstreamSimulator() as upstream:
        upstream.add_command(command.model_dump(mode="json"), notify=False)
        assert await _deliver_acks(pool, at=datetime.now(tz=UTC) + timedelta(seconds=1), upstream=upstream) == ["OK"]
        # The agent writes a revert timer of at most 20 s: not before then (and the margin) is the device surely free.
        just_before = stop_sent_at + timedelta(seconds=20) + planning.RELEASE_MARGIN - timedelta(milliseconds=1)
        assert await _deliver_acks(pool, at=just_before, upstream=upstream) == ["OK"]
        assert await _deliver_acks(pool, at=just_before + timedelta(milliseconds=1), upstream=upstream) == ["OK", "OK"]


async def test_a_refused_version_of_a_running_command_leaves_the_device_without_an_ok(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device = await _add_battery(pool, max_power_kw=5)
    await _action_queue(broker, [device])
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    receiver = CommandReceiver(repository=repository, clock=clock)
    command = _command(device, now=now)
    await receiver.receive(command, event_type="command.created", correlation_id=None)
    refused = _newer(command, battery_commands={"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 9000})
    await receiver.receive(refused, event_type="command.updated", correlation_id=None)

    assert await Dispatcher(repository=repository, publisher=broker.publisher, clock=clock).fire_due() == 1

    assert [status for status, _ in await _acks(pool, command.id)] == ["OK", "FAILED"]


async def test_an_action_stays_valid_past_its_command_s_end_for_the_next_action_to_replace_it(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device = await _add_battery(pool)
    queue = await _action_queue(broker, [device])
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    receiver = CommandReceiver(repository=repository, clock=clock)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    first = _command(device, now=now, ends_at=(now + timedelta(minutes=10)).isoformat())
    following = _command(
        device,
        now=now,
        battery={"mode": "CHARGE", "setpoint_w": 1500},
        starts_at=(now + timedelta(minutes=10)).isoformat(),
        ends_at=(now + timedelta(minutes=20)).isoformat(),
    )
    for command in (first, following):
        await receiver.receive(command, event_type="command.created", correlation_id=None)

    assert await dispatcher.fire_due() == 1
    [running] = await _drain(broker, queue)
    clock.set(first.ends_at)
    assert await dispatcher.fire_due() == 2  # the first's end and the next one's start

    # The device's revert timer is written to run out with the action: it must not free the device before
    # the next command's setpoint arrives, which replaces the first's in one write.
    assert running.command_id == first.id
    assert running.valid_until is not None and first.ends_at is not None and running.valid_until > first.ends_at
    assert running.valid_until == first.ends_at + planning.END_GRACE
    [next_action] = await _drain(broker, queue)
    assert (next_action.command_id, next_action.mode, next_action.setpoint_w) == (following.id, "CHARGE", 1500)
    assert next_action.valid_until == following.ends_at + planning.END_GRACE


async def test_a_resync_request_is_answered_with_the_device_s_current_action(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device, idle = await _add_battery(pool), await _add_battery(pool)
    queue = await _action_queue(broker, [device, idle])
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    command = _command(device, now=now, battery={"setpoint_w": 2500})
    await CommandReceiver(repository=repository, clock=clock).receive(
        command, event_type="command.created", correlation_id="trace-resync"
    )
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    assert await dispatcher.fire_due() == 1
    await _drain(broker, queue)
    clock.set(now + timedelta(minutes=5))
    request = DeviceResyncRequest(device_name=device, reason="agent started", requested_at=clock.now())

    answer = await dispatcher.resync(request)
    await dispatcher.resync(DeviceResyncRequest(device_name=idle, requested_at=clock.now()))

    actions = {action.device_name: action for action in await _drain(broker, queue)}
    assert actions[device] == answer
    assert (answer.command_id, answer.mode, answer.setpoint_w) == (command.id, "DISCHARGE", 2500)
    assert answer.issued_at == clock.now() and answer.valid_until == command.ends_at + planning.END_GRACE
    assert (actions[idle].command_id, actions[idle].mode) == (None, "SELF_CONSUMPTION")
    # A redelivered request gets the same action id, so the agent and the outcomes can tell.
    assert (await dispatcher.resync(request)).action_id == answer.action_id
    assert (await _history(pool, command.id))[-1] == "dispatched"
    assert await _timers(pool, command.id) == [("end", command.ends_at)]  # no timer fired or added


async def test_a_source_is_a_value_an_upstream_command_outranks_a_newer_plan_which_resumes_after_it(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    now = _now()
    device = await _add_battery(pool)
    queue = await _action_queue(broker, [device])
    repository = CommandRepository(pool)
    clock = FakeClock(now)
    dispatcher = Dispatcher(repository=repository, publisher=broker.publisher, clock=clock)
    command = _command(device, now=now, battery={"setpoint_w": 1000}, ends_at=(now + timedelta(minutes=10)).isoformat())
    # A control of a lower source, created after the command: by age alone it would win.
    step = _command(device, now=now, battery={"setpoint_w": 2000}, created_at=(now + timedelta(seconds=1)).isoformat())
    await CommandReceiver(repository=repository, clock=clock).receive(
        command, event_type="command.created", correlation_id=None
    )
    stored = await repository.store(
        lifecycle.LifecyclePlan(
            commands=(
                lifecycle.command_row(
                    step,
                    state=lifecycle.CommandState.SCHEDULED,
                    reason=None,
                    correlation_id=None,
                    source=ControlSource.PLAN,
                ),
            ),
            timers=(
                lifecycle.NewTimer(device, step.id, lifecycle.TimerKind.START, now),
                lifecycle.NewTimer(device, step.id, lifecycle.TimerKind.END, step.ends_at),
            ),
        )
    )
    assert stored == "applied"

    assert await dispatcher.fire_due() == 2
    [during] = await _drain(broker, queue)
    assert (during.command_id, during.setpoint_w) == (command.id, 1000)

    clock.set(now + timedelta(minutes=10))
    assert await dispatcher.fire_due() == 1  # the command's end
    [after] = await _drain(broker, queue)
    assert (after.command_id, after.setpoint_w) == (step.id, 2000)
    states = dict(await pool.fetch("SELECT command_id, state FROM scheduler.commands WHERE device_id = $1", device))
    assert states == {command.id: "completed", step.id: "active"}
    assert await _acks(pool, step.id) == []  # only upstream commands are acknowledged upstream


async def test_a_failure_seen_after_the_applied_outcome_of_the_same_action_fails_the_command_once(
    pool: asyncpg.Pool,
) -> None:
    now = _now()
    device = await _add_battery(pool)
    command = _command(device, now=now)
    repository = CommandRepository(pool)
    await CommandReceiver(repository=repository, clock=FakeClock(now)).receive(
        command, event_type="command.created", correlation_id=None
    )
    action_id = uuid.uuid4()
    applied = DeviceOutcome(
        action_id=action_id, command_id=command.id, device_name=device, applied=True, observed_at=now
    )
    # The device accepted the write, then did not follow it (an EV charger drawing above its profile).
    not_followed = DeviceOutcome(
        action_id=action_id,
        command_id=command.id,
        device_name=device,
        applied=False,
        reason="charger draws 11040 W, outside the limit of 5000 W",
        observed_at=now + timedelta(seconds=6),
    )

    assert await record_outcome(repository, applied) is True
    assert await record_outcome(repository, not_followed) is True
    assert await record_outcome(repository, not_followed) is False  # a redelivery

    assert await _acks(pool, command.id) == [
        ("OK", None),
        ("FAILED", "charger draws 11040 W, outside the limit of 5000 W"),
    ]
    state = await pool.fetchval("SELECT state FROM scheduler.commands WHERE command_id = $1", command.id)
    assert state == "failed"
