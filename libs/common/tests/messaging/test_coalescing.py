"""Coalesced publishing: concurrent publishes share writes, yet each is confirmed (or refused) on its own."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiormq
import pamqp.frame
import pytest
from pamqp.header import ContentHeader

from gridloop_common.messaging import Broker, BrokerUnavailable, QueueSpec, UnroutableError, open_broker
from gridloop_common.messaging.publisher import encode_content_header
from gridloop_common.settings import AmqpSettings
from gridloop_common.testing import FakeClock, FakeTimeEventLoop, TcpProxy

TEST_EXCHANGE = "gridloop.devices"

_PROPERTY_CASES: list[dict[str, Any]] = [
    {"headers": {"x-source": "gateway", "x-gridloop-intake": "webhook", "x-correlation-id": "c0ffee"}},
    {"headers": {"x-source": "s"}, "correlation_id": "rpc-1", "reply_to": "amq.gen-reply", "expiration": "1500"},
    {"headers": {"x-source": "s", "x-attempt": 3, "x-flag": True, "x-ratio": 0.5, "x-none": None}},
    {"headers": {"x-source": "s", "x-nested": {"a": [1, "b"]}, "x-big": 2**40, "x-neg": -7}},
    {"headers": {}, "delivery_mode": 1},
    {"headers": None, "content_type": "", "app_id": "", "message_id": "m"},
    {"headers": {"x-source": "é ünïcode"}, "message_id": "ü" * 127},
]


@pytest.mark.parametrize("case", _PROPERTY_CASES)
@pytest.mark.parametrize("channel_number", [1, 7, 65535])
def test_content_header_is_byte_for_byte_what_pamqp_marshals(case: dict[str, Any], channel_number: int) -> None:
    fields: dict[str, Any] = {
        "content_type": "application/json",
        "delivery_mode": 2,
        "correlation_id": None,
        "reply_to": None,
        "expiration": None,
        "message_id": "msg_2Q4Kq9",
        "app_id": "webhook-gateway",
        **case,
    }
    now = 1_767_225_600
    ours = encode_content_header(channel_number=channel_number, body_size=1234, timestamp=now, **fields)
    properties = aiormq.spec.Basic.Properties(timestamp=datetime.fromtimestamp(now, tz=UTC), **fields)
    theirs = pamqp.frame.marshal(ContentHeader(properties=properties, body_size=1234), channel_number)
    assert ours == theirs


def test_a_message_id_longer_than_a_short_string_is_refused_as_pamqp_refuses_it() -> None:
    with pytest.raises(TypeError, match="255 bytes"):
        encode_content_header(
            channel_number=1,
            body_size=0,
            content_type="application/json",
            headers={},
            delivery_mode=2,
            correlation_id=None,
            reply_to=None,
            expiration=None,
            message_id="m" * 256,
            timestamp=0,
            app_id="a",
        )


class _CountingQueue:
    """Stands in for the connection's write queue on one channel and counts what is written through it."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue
        self.writes = 0

    async def put(self, item: Any) -> None:
        self.writes += 1
        await self._queue.put(item)


async def _drain(broker: Broker, queue_name: str) -> list[tuple[str | None, bytes]]:
    queue = await broker.channel.get_queue(queue_name)
    found = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        found.append((message.message_id, message.body))
    return found


async def test_concurrent_publishes_share_writes_and_each_is_confirmed_and_stored(
    broker: Broker, queue: QueueSpec
) -> None:
    channel: Any = await broker.channel.get_underlay_channel()
    counting = _CountingQueue(channel.write_queue)
    channel.write_queue = counting
    try:
        total = 400
        unroutable_key = f"nobody.{uuid.uuid4().hex}"
        bodies = [f'{{"n": {number}}}'.encode() for number in range(total)]
        outcomes = await asyncio.gather(
            *(
                broker.publisher.publish(
                    exchange=TEST_EXCHANGE,
                    routing_key=unroutable_key if number == total // 2 else queue.name,
                    body=body,
                    message_id=f"m-{number}",
                )
                for number, body in enumerate(bodies)
            ),
            return_exceptions=True,
        )
    finally:
        channel.write_queue = counting._queue
    # The one unroutable publish among them raises, and only that one.
    failed = [number for number, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert failed == [total // 2]
    assert isinstance(outcomes[total // 2], UnroutableError)
    assert [outcome for number, outcome in enumerate(outcomes) if number != total // 2] == [
        f"m-{number}" for number in range(total) if number != total // 2
    ]
    # Coalesced: far fewer writes than messages (all were started in one turn of the event loop).
    assert counting.writes <= 4
    stored = await _drain(broker, queue.name)
    assert sorted(stored) == sorted((f"m-{n}", bodies[n]) for n in range(total) if n != total // 2)


async def test_sequential_publishes_still_work_one_write_each(broker: Broker, queue: QueueSpec) -> None:
    ids = [
        await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"x" * size)
        for size in (0, 1, 200_000)  # empty, small, and a body split over several content frames
    ]
    stored = await _drain(broker, queue.name)
    assert [message_id for message_id, _ in stored] == ids
    assert [len(body) for _, body in stored] == [0, 1, 200_000]


async def test_cancelled_publish_before_its_write_is_never_sent(broker: Broker, queue: QueueSpec) -> None:
    kept = asyncio.ensure_future(
        broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"kept", message_id="kept")
    )
    dropped = asyncio.ensure_future(
        broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"dropped", message_id="dropped")
    )
    await asyncio.sleep(0)  # both are queued for the same write
    dropped.cancel()
    assert await kept == "kept"
    with pytest.raises(asyncio.CancelledError):
        await dropped
    # The next publish gets the next delivery tag: a confirm is never matched to the wrong message.
    after = await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"after")
    assert [message_id for message_id, _ in await _drain(broker, queue.name)] == ["kept", after]


def _through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}"))


async def test_coalesced_publishes_through_a_connection_cut_never_confirm_an_unstored_message(
    amqp_url: str, broker: Broker, queue: QueueSpec
) -> None:
    confirmed: list[str] = []
    failures = 0
    waves = 12
    per_wave = 150

    async with TcpProxy(upstream_host="127.0.0.1", upstream_port=5672) as proxy:
        url = _through(proxy, amqp_url)
        settings = AmqpSettings(amqp_url=url, amqp_confirm_timeout_s=5.0)
        async with open_broker(settings, client_name="test-cut-coalesced", url=url) as publishing:

            async def publish_until_confirmed(message_id: str) -> None:
                nonlocal failures
                while True:
                    try:
                        confirmed.append(
                            await publishing.publisher.publish(
                                exchange=TEST_EXCHANGE,
                                routing_key=queue.name,
                                body=message_id.encode(),
                                message_id=message_id,
                            )
                        )
                        return
                    except BrokerUnavailable:
                        failures += 1
                        await asyncio.sleep(0.1)

            for wave in range(waves):
                batch = [
                    asyncio.ensure_future(publish_until_confirmed(f"w{wave}-{number}")) for number in range(per_wave)
                ]
                if wave in (4, 8):
                    # Cut while the wave's coalesced frames are on the wire and their confirms are pending.
                    await asyncio.sleep(0.002)
                    assert proxy.cut() >= 2
                async with asyncio.timeout(60):
                    await asyncio.gather(*batch)
    assert failures > 0  # the cuts really failed publishes in flight
    stored = {message_id for message_id, _ in await _drain(broker, queue.name)}
    assert set(confirmed) <= stored
    assert len(confirmed) == len(set(confirmed)) == waves * per_wave


class _BlackHole:
    """A write queue that loses everything: the broker never sees (so never confirms) these publishes."""

    def __init__(self) -> None:
        self.frames: list[Any] = []

    async def put(self, item: Any) -> None:
        self.frames.append(item)


def test_a_publish_never_confirmed_fails_at_its_deadline_and_others_keep_theirs(amqp_url: str) -> None:
    # The confirm deadlines are the event loop's timers: this runs on a loop whose time is a FakeClock, so
    # each publish is shown pending just before its deadline and failed at it, however busy the machine is.
    clock = FakeClock()
    with asyncio.Runner(loop_factory=lambda: FakeTimeEventLoop(clock)) as runner:
        runner.run(_publishes_never_confirmed(amqp_url, clock))


async def _turns(count: int = 5) -> None:
    """Let the loop run due timers and the tasks they wake (a timer's callback, then its waiter's step)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def _publishes_never_confirmed(amqp_url: str, clock: FakeClock) -> None:
    from aio_pika.abc import AbstractRobustChannel

    from gridloop_common.messaging import Publisher

    settings = AmqpSettings(amqp_url=amqp_url, amqp_confirm_timeout_s=5.0)
    async with open_broker(settings, client_name=f"test-{uuid.uuid4().hex[:6]}", url=amqp_url) as broker:
        channel = await broker.connection.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(channel, AbstractRobustChannel)
        underlay: Any = await channel.get_underlay_channel()
        real_queue = underlay.write_queue
        hole = _BlackHole()
        underlay.write_queue = hole
        try:
            publisher = Publisher(connection=broker.connection, channel=channel, source="test", confirm_timeout_s=0.3)
            first = asyncio.ensure_future(publisher.publish(exchange=TEST_EXCHANGE, routing_key="x", body=b"1"))
            await _turns()
            clock.advance(0.15)
            second = asyncio.ensure_future(publisher.publish(exchange=TEST_EXCHANGE, routing_key="x", body=b"2"))
            cancelled = asyncio.ensure_future(publisher.publish(exchange=TEST_EXCHANGE, routing_key="x", body=b"3"))
            await _turns()
            clock.advance(0.05)
            cancelled.cancel()
            clock.advance(0.099)  # 0.299 s after the first publish: nothing is due yet
            await _turns()
            assert not first.done() and not second.done()
            clock.advance(0.001)  # the first publish's deadline
            await _turns()
            assert first.done()
            with pytest.raises(BrokerUnavailable, match=r"no publisher confirm within 0\.3 s"):
                first.result()
            clock.advance(0.149)  # 0.299 s after the second publish
            await _turns()
            assert not second.done()  # its own deadline, not the first publish's
            clock.advance(0.001)
            await _turns()
            assert second.done()
            with pytest.raises(BrokerUnavailable, match=r"no publisher confirm within 0\.3 s"):
                second.result()
            with pytest.raises(asyncio.CancelledError):
                await cancelled  # the caller's own cancellation is not turned into a broker error
            assert len(hole.frames) == 2  # one write per batch
            assert not publisher._expired
        finally:
            # Back to the real writer first: the close waits for the broker's answer, and on this loop no
            # timeout would end that wait.
            underlay.write_queue = real_queue
            await channel.close()


async def test_a_connection_lost_fails_pending_confirms_at_once_not_at_the_deadline(
    amqp_url: str, broker: Broker, queue: QueueSpec
) -> None:
    async with TcpProxy(upstream_host="127.0.0.1", upstream_port=5672) as proxy:
        url = _through(proxy, amqp_url)
        settings = AmqpSettings(amqp_url=url, amqp_confirm_timeout_s=5.0)
        async with open_broker(settings, client_name="test-cut-pending", url=url) as publishing:
            pending = [
                asyncio.ensure_future(
                    publishing.publisher.publish(
                        exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"p", message_id=f"p-{number}"
                    )
                )
                for number in range(200)
            ]
            await asyncio.sleep(0)  # the batch's write is handed over
            await asyncio.sleep(0)
            proxy.cut()
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert failed, "the cut came after every confirm: nothing was pending"
    assert all(isinstance(outcome, BrokerUnavailable) for outcome in failed)
    # Failed by the close, not by the 5 s confirm deadline: the deadline's failure says so in its message.
    assert [str(outcome) for outcome in failed if "no publisher confirm" in str(outcome)] == []
    assert all(str(outcome).startswith("broker unavailable: ") for outcome in failed)
    stored = {message_id for message_id, _ in await _drain(broker, queue.name)}
    assert {outcome for outcome in outcomes if isinstance(outcome, str)} <= stored


async def test_a_publish_reaches_the_writer_in_the_turn_it_is_made(broker: Broker, queue: QueueSpec) -> None:
    # A publish that waited for a later turn to be written made every publish-then-confirm caller (the
    # scheduler dispatches up to a hundred in one transaction) wait one more pass of a busy event loop each.
    channel: Any = await broker.channel.get_underlay_channel()
    counting = _CountingQueue(channel.write_queue)
    channel.write_queue = counting
    try:
        loop = asyncio.get_running_loop()
        writes_seen: asyncio.Future[int] = loop.create_future()
        published = asyncio.ensure_future(
            broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"now", message_id="now")
        )
        # Runs in the next turn right after the publish's first step, before anything that step scheduled.
        loop.call_soon(lambda: writes_seen.set_result(counting.writes))
        assert await writes_seen == 1
        assert await published == "now"
    finally:
        channel.write_queue = counting._queue
    assert await _drain(broker, queue.name) == [("now", b"now")]


async def test_a_publish_never_joins_a_write_queued_before_an_aiormq_publish_on_the_same_channel(
    broker: Broker, queue: QueueSpec
) -> None:
    # The delivery tag is the position on the wire: had the third publish joined the first one's write, it
    # would go out before aiormq's and the two would swap confirms (here: an ack and a nack).
    channel: Any = await broker.channel.get_underlay_channel()
    full = f"test.full.{uuid.uuid4().hex[:8]}"
    await channel.queue_declare(full, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    await channel.queue_bind(full, TEST_EXCHANGE, routing_key=full)
    first = asyncio.ensure_future(
        broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=full, body=b"1", message_id="first")
    )
    theirs = asyncio.ensure_future(
        channel.basic_publish(
            b"2",
            exchange=TEST_EXCHANGE,
            routing_key=queue.name,
            mandatory=True,
            properties=aiormq.spec.Basic.Properties(message_id="theirs", delivery_mode=2),
        )
    )
    third = asyncio.ensure_future(
        broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=full, body=b"3", message_id="third")
    )
    outcomes = await asyncio.gather(first, theirs, third, return_exceptions=True)
    assert outcomes[0] == "first"
    assert isinstance(outcomes[1], aiormq.spec.Basic.Ack)
    assert isinstance(outcomes[2], BrokerUnavailable)  # the queue is full: the broker refuses it
    assert await _drain(broker, queue.name) == [("theirs", b"2")]
    assert await _drain(broker, full) == [("first", b"1")]
