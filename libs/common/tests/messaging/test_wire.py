"""The publisher's fast path (messaging/_wire.py) against its reference, aio-pika's own publish.

What the ``Publisher`` writes for a message must be, byte for byte, what ``aio_pika.Exchange.publish``
writes for the same message (method, content header with properties and headers, body split into frames),
and the aiormq internals it registers publishes in must still exist and behave as in aiormq 7.2. An aiormq
upgrade that breaks either fails here, naming what changed.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import uuid
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import pamqp.frame
import pytest
from pamqp.header import ContentHeader

from gridloop_common.messaging import Broker, QueueSpec
from gridloop_common.messaging._wire import CHANNEL_INTERNALS, WRITE_INTERNALS, missing_internals
from gridloop_common.messaging.publisher import _PendingWrite

TEST_EXCHANGE = "gridloop.devices"
SOURCE_HEADER = "x-source"


class _Recorded:
    """A queued write seen through: records the bytes aiormq's writer takes from it."""

    def __init__(self, item: Any, seen: list[bytes]) -> None:
        self._item = item
        self._seen = seen

    @property
    def payload(self) -> bytes:
        payload: bytes = self._item.payload
        self._seen.append(payload)
        return payload

    def __getattr__(self, name: str) -> Any:
        return getattr(self._item, name)


class _RecordingQueue:
    """Stands in for the connection's write queue on one channel and records every write's bytes."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue
        self.writes: list[bytes] = []

    async def put(self, item: Any) -> None:
        await self.queue.put(_Recorded(item, self.writes))


async def _written(channel: Any, publish: collections.abc.Awaitable[Any]) -> bytes:
    """The bytes one publish puts on the wire (the writer has taken them once the confirm is back)."""
    recording = _RecordingQueue(channel.write_queue)
    channel.write_queue = recording
    try:
        await publish
    finally:
        channel.write_queue = recording.queue
    assert len(recording.writes) == 1
    return recording.writes[0]


def _frames(wire: bytes) -> list[Any]:
    found = []
    while wire:
        consumed, _, frame = pamqp.frame.unmarshal(wire)
        found.append(frame)
        wire = wire[consumed:]
    return found


_MESSAGES: list[dict[str, Any]] = [
    {"body": b'{"event_type": "command.created"}', "headers": {"x-gridloop-intake": "webhook"}},
    {"body": b"{}", "headers": {"x-attempt": 3, "x-flag": True, "x-ratio": 0.5, "x-nested": {"a": [1, "b"]}}},
    {"body": b"", "headers": None, "correlation_id": "rpc-1", "reply_to": "amq.gen-reply", "expiration_s": 30},
    {"body": b"x" * 300_000, "headers": {"x-source-note": "é ünïcode"}},  # beyond frame_max: three body frames
    {"body": b'{"n": 1}', "headers": None, "persistent": False},
]


@pytest.mark.parametrize("message", _MESSAGES, ids=["webhook", "typed-headers", "rpc-empty", "split", "transient"])
async def test_the_publisher_writes_what_aio_pika_writes_for_the_same_message(
    broker: Broker, queue: QueueSpec, message: dict[str, Any]
) -> None:
    channel: Any = await broker.channel.get_underlay_channel()
    message_id = f"m-{uuid.uuid4().hex}"
    ours = await _written(
        channel,
        broker.publisher.publish(
            exchange=TEST_EXCHANGE,
            routing_key=queue.name,
            body=message["body"],
            message_id=message_id,
            headers=message["headers"],
            correlation_id=message.get("correlation_id"),
            reply_to=message.get("reply_to"),
            expiration_s=message.get("expiration_s"),
            persistent=message.get("persistent", True),
        ),
    )
    # The header the publisher wrote tells the second it stamped and its source; aio-pika gets the same.
    header = _frames(ours)[1]
    assert isinstance(header, ContentHeader)
    properties = header.properties
    reference = aio_pika.Message(
        message["body"],
        headers={SOURCE_HEADER: properties.app_id, **(message["headers"] or {})},
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        if message.get("persistent", True)
        else aio_pika.DeliveryMode.NOT_PERSISTENT,
        correlation_id=message.get("correlation_id"),
        reply_to=message.get("reply_to"),
        expiration=message.get("expiration_s"),
        message_id=message_id,
        timestamp=datetime.fromtimestamp(properties.timestamp.timestamp(), tz=UTC),
        app_id=properties.app_id,
    )
    # aio-pika always sends priority 0; the publisher sends none, which a broker reads as 0 too.
    reference.priority = None
    exchange = await broker.channel.get_exchange(TEST_EXCHANGE, ensure=False)
    theirs = await _written(channel, exchange.publish(reference, routing_key=queue.name, mandatory=True))
    assert [type(frame).__name__ for frame in _frames(ours)] == [type(frame).__name__ for frame in _frames(theirs)]
    assert ours == theirs


async def test_the_aiormq_channel_internals_the_publisher_relies_on_are_still_there(broker: Broker) -> None:
    channel: Any = await broker.channel.get_underlay_channel()
    version = installed_version("aiormq")
    missing = missing_internals(channel, CHANNEL_INTERNALS)
    assert not missing, (
        f"aiormq {version}: aiormq.Channel no longer has {missing}; the publisher's fast path "
        f"(gridloop_common/messaging/_wire.py, CHANNEL_INTERNALS) registers its publishes there. Keep aiormq "
        f"below this release or adapt publisher.py, then this test."
    )
    expected_types = {
        "delivery_tag": int,
        "confirmations": collections.abc.MutableMapping,
        "message_id_delivery_tag": collections.abc.MutableMapping,
        "write_queue": asyncio.Queue,
        "max_content_size": int,
    }
    for name, kind in expected_types.items():
        assert isinstance(getattr(channel, name), kind), (
            f"aiormq {version}: Channel.{name} is now {type(getattr(channel, name)).__name__}, not {kind.__name__}; "
            f"the publisher's fast path relies on it ({CHANNEL_INTERNALS[name]})"
        )
    frame_max = channel.connection.connection_tune.frame_max
    assert channel.max_content_size == frame_max - 8, (
        f"aiormq {version}: Channel.max_content_size is {channel.max_content_size}, not frame_max - 8 "
        f"({frame_max - 8}); _wire.encode_body splits bodies as aiormq did"
    )
    assert hasattr(channel.lock, "__aenter__"), (
        f"aiormq {version}: Channel.lock is no longer an async context manager; the publisher holds it to "
        f"order its writes with basic_publish"
    )
    assert issubclass(aiormq.channel.Returning, asyncio.Future), (
        f"aiormq {version}: aiormq.channel.Returning is no longer a Future; the publisher's _fail_pending skips it"
    )


async def test_aiormq_writes_frames_and_registers_a_publish_as_the_publisher_does(
    broker: Broker, queue: QueueSpec
) -> None:
    """What ``_PendingWrite`` imitates: the writer's view of a queued write and basic_publish's registration."""
    version = installed_version("aiormq")
    frame_fields = {field.name for field in aiormq.abc.ChannelFrame.__dataclass_fields__.values()}
    frame_missing = [
        name for name in WRITE_INTERNALS if name not in frame_fields and not hasattr(aiormq.abc.ChannelFrame, name)
    ]
    assert not frame_missing, (
        f"aiormq {version}: aiormq.abc.ChannelFrame no longer has {frame_missing}; publisher._PendingWrite "
        f"stands in for it in the write queue (_wire.WRITE_INTERNALS)"
    )
    assert missing_internals(_PendingWrite, WRITE_INTERNALS) == []
    assert inspect.isfunction(aiormq.abc.ChannelFrame.drain)

    channel: Any = await broker.channel.get_underlay_channel()
    registered: list[tuple[int, bool, int | None]] = []

    class _Inspecting:
        def __init__(self, queue: asyncio.Queue[Any]) -> None:
            self.queue = queue

        async def put(self, item: Any) -> None:
            # At the moment basic_publish queues its frame: its tag taken, its confirm and message id registered.
            tag = channel.delivery_tag
            registered.append((tag, tag in channel.confirmations, channel.message_id_delivery_tag.get("probe")))
            await self.queue.put(item)

    before = channel.delivery_tag
    channel.write_queue = _Inspecting(channel.write_queue)
    try:
        properties = aiormq.spec.Basic.Properties(message_id="probe", delivery_mode=2)
        await channel.basic_publish(
            b"{}", exchange=TEST_EXCHANGE, routing_key=queue.name, properties=properties, mandatory=True
        )
    finally:
        channel.write_queue = channel.write_queue.queue
    assert registered == [(before + 1, True, before + 1)], (
        f"aiormq {version}: basic_publish no longer registers a publish as (delivery_tag + 1, confirmations[tag], "
        f"message_id_delivery_tag[message id] = tag), which publisher._PendingWrite.add imitates; saw {registered}"
    )


def test_a_missing_internal_is_named() -> None:
    class _OlderChannel:
        delivery_tag = 0
        confirmations: dict[int, Any] = {}

    assert missing_internals(_OlderChannel(), CHANNEL_INTERNALS) == [
        "message_id_delivery_tag",
        "write_queue",
        "lock",
        "max_content_size",
    ]
