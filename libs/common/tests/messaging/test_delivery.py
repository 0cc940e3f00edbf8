"""Publish and consume promises against the real broker: confirms, unroutable, retry, dead-letter, RPC."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from pydantic import BaseModel

from gridloop_common.messaging import (
    DEAD_LETTER_ATTEMPTS_HEADER,
    DEAD_LETTER_REASON_HEADER,
    Broker,
    Consumer,
    Delivery,
    PoisonMessage,
    QueueSpec,
    RpcClient,
    RpcError,
    RpcTimeout,
    UnroutableError,
    declare_queue,
    model_handler,
    rpc_handler,
)

TEST_EXCHANGE = "gridloop.devices"


async def _dead_letters(broker: Broker, spec: QueueSpec, *, expected: int, timeout_s: float = 20.0) -> list[dict]:
    """Wait until ``expected`` messages sit in the dead-letter queue; return their headers and bodies."""
    queue = await broker.channel.get_queue(spec.dead_letter_queue)
    found: list[dict] = []
    async with asyncio.timeout(timeout_s):
        while len(found) < expected:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            found.append({"headers": dict(message.headers), "body": message.body})
    return found


async def test_unroutable_publish_raises(broker: Broker) -> None:
    with pytest.raises(UnroutableError, match="no queue bound"):
        await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=f"nobody.{uuid.uuid4()}", body=b"{}")


async def test_confirmed_publish_is_in_the_queue(broker: Broker, queue: QueueSpec) -> None:
    message_id = await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b'{"n": 1}')
    received = await (await broker.channel.get_queue(queue.name)).get(no_ack=True)
    assert received.message_id == message_id
    assert received.delivery_mode == 2  # persistent


async def test_always_failing_handler_dead_letters_after_exactly_the_delivery_limit(
    broker: Broker, queue: QueueSpec
) -> None:
    attempts: list[int] = []

    async def always_fails(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("device table locked")

    async with Consumer(
        channel=broker.channel,
        publisher=broker.publisher,
        queue_name=queue.name,
        handler=always_fails,
        delivery_limit=queue.delivery_limit,
        retry_backoff_s=0.01,
    ):
        await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b'{"n": 1}')
        (dead,) = await _dead_letters(broker, queue, expected=1)

    assert attempts == [1, 2, 3]
    assert dead["body"] == b'{"n": 1}'
    assert dead["headers"][DEAD_LETTER_ATTEMPTS_HEADER] == 3
    assert "RuntimeError: device table locked" in dead["headers"][DEAD_LETTER_REASON_HEADER]
    # Nothing is left to redeliver.
    assert (await (await broker.channel.get_queue(queue.name)).get(fail=False)) is None


async def test_handler_failing_once_then_succeeding_has_one_effect(broker: Broker, queue: QueueSpec) -> None:
    effects: list[str] = []
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise ConnectionResetError("transient")
        effects.append(delivery.json()["command"])
        done.set()

    async with Consumer(
        channel=broker.channel,
        publisher=broker.publisher,
        queue_name=queue.name,
        handler=flaky,
        retry_backoff_s=0.01,
    ):
        await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b'{"command": "c-1"}')
        async with asyncio.timeout(20):
            await done.wait()
    assert attempts == [1, 2]
    assert effects == ["c-1"]
    assert (await (await broker.channel.get_queue(queue.dead_letter_queue)).get(fail=False)) is None


class _Reading(BaseModel):
    device: str
    power_kw: float


async def test_invalid_message_is_dead_lettered_at_once_with_the_field_named(broker: Broker, queue: QueueSpec) -> None:
    handled: list[_Reading] = []

    async def handle(reading: _Reading, delivery: Delivery) -> None:
        handled.append(reading)

    async with Consumer(
        channel=broker.channel,
        publisher=broker.publisher,
        queue_name=queue.name,
        handler=model_handler(_Reading, handle),
    ):
        await broker.publisher.publish(
            exchange=TEST_EXCHANGE, routing_key=queue.name, body=b'{"device": "b1", "power_kw": "lots"}'
        )
        await broker.publisher.publish(
            exchange=TEST_EXCHANGE, routing_key=queue.name, body=b'{"device": "b2", "power_kw": 1.5}'
        )
        (dead,) = await _dead_letters(broker, queue, expected=1)
        async with asyncio.timeout(10):
            while not handled:
                await asyncio.sleep(0.02)
    assert dead["headers"][DEAD_LETTER_ATTEMPTS_HEADER] == 1
    assert "power_kw" in dead["headers"][DEAD_LETTER_REASON_HEADER]
    assert handled == [_Reading(device="b2", power_kw=1.5)]


async def test_poison_message_is_not_retried(broker: Broker, queue: QueueSpec) -> None:
    attempts: list[int] = []

    async def refuse(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise PoisonMessage("unknown device 'ghost'")

    async with Consumer(channel=broker.channel, publisher=broker.publisher, queue_name=queue.name, handler=refuse):
        await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"{}")
        (dead,) = await _dead_letters(broker, queue, expected=1)
    assert attempts == [1]
    assert dead["headers"][DEAD_LETTER_REASON_HEADER] == "unknown device 'ghost'"


async def test_correlation_id_travels_in_headers(broker: Broker, queue: QueueSpec) -> None:
    from gridloop_common.observability import correlation_id, current_correlation_id

    seen: list[str | None] = []
    done = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        seen.append(current_correlation_id())
        done.set()

    async with Consumer(channel=broker.channel, publisher=broker.publisher, queue_name=queue.name, handler=handle):
        with correlation_id("trace-1234"):
            await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"{}")
        async with asyncio.timeout(10):
            await done.wait()
    assert seen == ["trace-1234"]


async def _rpc_queue(broker: Broker) -> tuple[QueueSpec, str]:
    service = f"svc{uuid.uuid4().hex[:8]}"
    spec = QueueSpec(f"{service}.rpc", bindings=(("gridloop.rpc", f"{service}.#"),), delivery_limit=2)
    await declare_queue(broker.channel, spec)
    return spec, service


async def test_rpc_round_trip_and_error_reply(broker: Broker) -> None:
    spec, service = await _rpc_queue(broker)

    async def serve(delivery: Delivery) -> bytes:
        if delivery.routing_key.endswith(".double"):
            return json.dumps({"value": delivery.json()["value"] * 2}).encode()
        raise PoisonMessage("no such method")

    async with (
        Consumer(
            channel=broker.channel,
            publisher=broker.publisher,
            queue_name=spec.name,
            handler=rpc_handler(broker.publisher, serve),
        ),
        RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="test") as client,
    ):
        reply = await client.call(f"{service}.double", b'{"value": 21}', timeout_s=10)
        assert json.loads(reply) == {"value": 42}
        with pytest.raises(RpcError, match="no such method"):
            await client.call(f"{service}.missing", b"{}", timeout_s=10)


async def test_rpc_to_a_service_that_is_down_times_out_with_a_clear_error(broker: Broker) -> None:
    _, service = await _rpc_queue(broker)  # the queue exists, nothing consumes it
    async with RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="test") as client:
        with pytest.raises(
            RpcTimeout, match=rf"no reply to '{service}.plan' within 0.5 s: is the serving service running\?"
        ):
            await client.call(f"{service}.plan", b"{}", timeout_s=0.5)


async def test_rpc_to_a_routing_key_nobody_serves_is_refused_at_once(broker: Broker) -> None:
    async with RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="test") as client:
        with pytest.raises(UnroutableError):
            await client.call(f"nobody{uuid.uuid4().hex[:6]}.plan", b"{}", timeout_s=5)
