"""The consumer counts attempts from what the broker wrote, never from a producer's own header."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from gridloop_common.messaging import Broker, Consumer, Delivery, PoisonMessage, QueueSpec
from gridloop_common.messaging.consumer import _attempt_of

TEST_EXCHANGE = "gridloop.devices"


@dataclass
class _Delivered:
    """What _attempt_of reads of an incoming message: its headers and the broker's redelivered flag."""

    redelivered: bool
    headers: dict[str, Any] = field(default_factory=dict)


@pytest.mark.parametrize(
    ("redelivered", "headers", "attempt"),
    [
        (False, {}, 1),
        (False, {"x-delivery-count": 4}, 1),  # first delivery: a header can only be the producer's
        (False, {"x-delivery-count": 99, "x-acquired-count": 99}, 1),
        (True, {"x-delivery-count": 1}, 2),
        (True, {"x-delivery-count": 4}, 5),
        (True, {}, 1),  # RabbitMQ 4.3: requeued without a failure (a nack on shutdown)
        (True, {"x-delivery-count": 4, "x-acquired-count": 1}, 2),  # 4.3: the forged count bounded by the broker's
        (True, {"x-delivery-count": "4"}, 1),
        (True, {"x-delivery-count": True}, 1),
    ],
)
def test_attempt_counts_only_what_the_broker_wrote(redelivered: bool, headers: dict[str, Any], attempt: int) -> None:
    assert _attempt_of(_Delivered(redelivered, headers)) == attempt  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested too deeply"), (b"9" * 5000, "digits")],
)
def test_json_that_breaks_the_parser_is_poison(body: bytes, problem: str) -> None:
    delivery = Delivery(
        body=body,
        headers={},
        routing_key="r",
        exchange="e",
        message_id=None,
        correlation_id=None,
        reply_to=None,
        attempt=1,
        redelivered=False,
    )
    with pytest.raises(PoisonMessage, match=problem):
        delivery.json()


async def test_a_forged_delivery_count_on_the_real_broker_does_not_dead_letter_early(
    broker: Broker, queue: QueueSpec
) -> None:
    """A producer's header claiming the last allowed attempt: the first failure is still retried."""
    attempts: list[int] = []
    done = asyncio.Event()

    async def fails_once(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if len(attempts) == 1:
            raise ConnectionResetError("transient")
        done.set()

    async with Consumer(
        channel=broker.channel,
        publisher=broker.publisher,
        queue_name=queue.name,
        handler=fails_once,
        delivery_limit=queue.delivery_limit,
        retry_backoff_s=0.01,
    ):
        await broker.publisher.publish(
            exchange=TEST_EXCHANGE,
            routing_key=queue.name,
            body=b"{}",
            headers={"x-delivery-count": queue.delivery_limit - 1},
        )
        async with asyncio.timeout(20):
            await done.wait()
    assert attempts == [1, 2]
    assert (await (await broker.channel.get_queue(queue.dead_letter_queue)).get(fail=False)) is None
