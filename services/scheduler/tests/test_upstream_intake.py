"""The scheduler's intake from gridloop.upstream on the real broker and database: what can never be stored.

Envelopes that PostgreSQL cannot store (NaN, U+0000, lone surrogates, a NUL in the message id), that
break a parser (deep nesting, giant integers), that are too large, or whose command has no usable id are
dead-lettered at the first attempt with the reason, not retried five times, and leave nothing stored;
a command whose id can be read is acknowledged FAILED upstream with that reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gridloop_common.clock import SystemClock
from gridloop_common.contracts import routing
from gridloop_common.messaging import (
    DEAD_LETTER_ATTEMPTS_HEADER,
    DEAD_LETTER_REASON_HEADER,
    Broker,
    Consumer,
    open_broker,
)
from gridloop_common.settings import AmqpSettings
from scheduler.commands import CommandReceiver
from scheduler.handlers import upstream_event_handler
from scheduler.repository import CommandRepository, EventRepository

MAX_ENVELOPE_BYTES = 64 * 1024
DEAD_LETTERS = routing.dead_letter_queue(routing.Queues.SCHEDULER_UPSTREAM)


@dataclass
class Intake:
    broker: Broker
    pool: asyncpg.Pool
    handled: list[str]  # message ids the handler returned from (acked)

    async def publish(self, body: bytes, *, event_type: str = "command.created", message_id: str | None = None) -> str:
        return await self.broker.publisher.publish(
            exchange=routing.UPSTREAM_EXCHANGE, routing_key=event_type, body=body, message_id=message_id
        )

    async def dead_letter(self, timeout_s: float = 20.0) -> dict[str, Any]:
        queue = await self.broker.channel.get_queue(DEAD_LETTERS)
        async with asyncio.timeout(timeout_s):
            while (message := await queue.get(fail=False, no_ack=True)) is None:
                await asyncio.sleep(0.02)
        return {"headers": dict(message.headers), "body": message.body, "message_id": message.message_id}

    async def stored_events(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM scheduler.upstream_events"))

    async def acks(self, command_id: str) -> list[tuple[str, str]]:
        rows = await self.pool.fetch(
            "SELECT device_status, device_status_reason FROM scheduler.ack_outbox WHERE command_id = $1 ORDER BY id",
            uuid.UUID(command_id),
        )
        return [(row["device_status"], row["device_status_reason"]) for row in rows]


@pytest.fixture
async def intake(amqp_url: str, pool: asyncpg.Pool) -> AsyncIterator[Intake]:
    settings = AmqpSettings(amqp_url=amqp_url, amqp_confirm_timeout_s=5.0)
    async with open_broker(settings, client_name=f"test-intake-{uuid.uuid4().hex[:6]}", url=amqp_url) as broker:
        await (await broker.channel.get_queue(routing.Queues.SCHEDULER_UPSTREAM)).purge()
        await (await broker.channel.get_queue(DEAD_LETTERS)).purge()
        commands = CommandRepository(pool)
        handle = upstream_event_handler(
            EventRepository(pool),
            CommandReceiver(repository=commands, clock=SystemClock()),
            commands,
            max_envelope_bytes=MAX_ENVELOPE_BYTES,
        )
        handled: list[str] = []

        async def recording(delivery: Any) -> None:
            await handle(delivery)
            handled.append(delivery.message_id)

        async with Consumer(
            channel=broker.channel,
            publisher=broker.publisher,
            queue_name=routing.Queues.SCHEDULER_UPSTREAM,
            handler=recording,
            retry_backoff_s=0.01,
        ):
            yield Intake(broker=broker, pool=pool, handled=handled)


def _command(**changes: Any) -> dict[str, Any]:
    now = datetime.now(tz=UTC).replace(microsecond=0)
    command = {
        "id": str(uuid.uuid4()),
        "event_id": None,
        "device_id": "battery-nowhere",
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        "duration_s": 3600,
        "is_preparatory_action": False,
        "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000},
        "status": "OK",
        "device_status": "PENDING",
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }
    command.update(changes)
    return command


def _envelope(command: dict[str, Any], *, note: bytes | None = None) -> bytes:
    """A command.created envelope; ``note`` (raw JSON) goes into a command field the schema ignores."""
    body = json.dumps(
        {"event_type": "command.created", "event_object": command, "timestamp": datetime.now(tz=UTC).isoformat()}
    ).encode()
    return body if note is None else body.replace(b'"event_id": null', b'"event_id": null, "note": ' + note)


UNSTORABLE_JSON = [
    ("NaN", b"NaN", "NaN is not a JSON number"),
    ("-Infinity", b"[-Infinity]", "-Infinity is not a JSON number"),
    ("an escaped NUL", b'"a\\u0000b"', "U+0000"),
    ("a lone surrogate", b'{"k": "\\udfff"}', "lone UTF-16 surrogate"),
]


@pytest.mark.parametrize(("case", "note", "problem"), UNSTORABLE_JSON, ids=[case for case, *_ in UNSTORABLE_JSON])
async def test_json_jsonb_cannot_hold_is_poison_at_once_and_the_command_fails_upstream(
    intake: Intake, case: str, note: bytes, problem: str
) -> None:
    command = _command()
    message_id = await intake.publish(_envelope(command, note=note))
    dead = await intake.dead_letter()
    assert dead["message_id"] == message_id
    assert dead["headers"][DEAD_LETTER_ATTEMPTS_HEADER] == 1  # not retried as if it were transient
    reason = dead["headers"][DEAD_LETTER_REASON_HEADER]
    assert problem in reason and "event_object.note" in reason
    assert await intake.stored_events() == 0
    ((status, ack_reason),) = await intake.acks(command["id"])
    assert status == "FAILED"
    assert problem in ack_reason


@pytest.mark.parametrize(
    ("case", "note", "problem"),
    [
        ("10,000-deep JSON", b"[" * 10_000 + b"]" * 10_000, "nested more than"),
        ("a 5,000-digit integer", b"9" * 5000, "number of 5000 digits"),
    ],
)
async def test_json_that_breaks_the_parser_is_poison_at_once(
    intake: Intake, case: str, note: bytes, problem: str
) -> None:
    await intake.publish(_envelope(_command(), note=note))
    dead = await intake.dead_letter()
    assert dead["headers"][DEAD_LETTER_ATTEMPTS_HEADER] == 1
    assert problem in dead["headers"][DEAD_LETTER_REASON_HEADER]
    assert await intake.stored_events() == 0


async def test_a_value_postgresql_refuses_is_poison_at_once_and_the_command_fails_upstream(intake: Intake) -> None:
    # A producer's message id becomes the event key, a text column: PostgreSQL refuses its NUL (22021).
    command = _command()
    await intake.publish(_envelope(command), message_id="producer\x00id")
    dead = await intake.dead_letter()
    assert dead["headers"][DEAD_LETTER_ATTEMPTS_HEADER] == 1
    assert "PostgreSQL cannot store this command.created event (22021)" in dead["headers"][DEAD_LETTER_REASON_HEADER]
    assert await intake.stored_events() == 0
    ((status, reason),) = await intake.acks(command["id"])
    assert status == "FAILED"
    assert "22021" in reason


async def test_a_command_without_an_id_is_dead_lettered_and_not_stored(intake: Intake) -> None:
    command = _command()
    del command["id"]
    await intake.publish(_envelope(command))
    dead = await intake.dead_letter()
    assert dead["headers"][DEAD_LETTER_ATTEMPTS_HEADER] == 1
    assert "invalid command without a usable id" in dead["headers"][DEAD_LETTER_REASON_HEADER]
    assert await intake.stored_events() == 0


async def test_an_envelope_over_the_size_limit_is_dead_lettered_and_not_stored(intake: Intake) -> None:
    command = _command()
    await intake.publish(_envelope(command, note=json.dumps("x" * MAX_ENVELOPE_BYTES).encode()))
    dead = await intake.dead_letter()
    assert dead["headers"][DEAD_LETTER_ATTEMPTS_HEADER] == 1
    assert f"over the {MAX_ENVELOPE_BYTES}-byte limit" in dead["headers"][DEAD_LETTER_REASON_HEADER]
    assert await intake.stored_events() == 0
    assert await intake.acks(command["id"]) == []


async def test_an_ordinary_command_and_event_are_still_stored(intake: Intake) -> None:
    command = _command()
    first = await intake.publish(_envelope(command, note=b'"NaN and \\\\u0000 as text"'))
    event = json.dumps(
        {"event_type": "event.created", "event_object": {"n": 1e300}, "timestamp": datetime.now(tz=UTC).isoformat()}
    ).encode()
    second = await intake.publish(event, event_type="event.created")
    async with asyncio.timeout(20):
        while set(intake.handled) != {first, second}:
            await asyncio.sleep(0.02)
    assert await intake.stored_events() == 2
    # The device is unknown: refused with that reason, not for the note that merely looks like a refused value.
    ((status, reason),) = await intake.acks(command["id"])
    assert (status, reason.startswith("unknown device")) == ("FAILED", True)
