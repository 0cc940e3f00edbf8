"""Publishing the broker has taken responsibility for: persistent, confirmed, never silently unroutable.

Concurrent publishes on one channel are coalesced: each publish encodes its own frames, and the ones
made in the same turn of the event loop go to the connection's writer as one write (one syscall instead
of one per message). Each message still gets its own delivery tag and waits for its own confirm, exactly
as ``aiormq.Channel.basic_publish`` would register it, so a return (unroutable) or a nack reaches only
the publish it belongs to, and a connection lost before the confirm fails every publish still waiting.
"""

from __future__ import annotations

import asyncio
import functools
import os
import struct
import time
from collections.abc import Mapping
from typing import Any, cast

import aiormq
import pamqp.encode
import pamqp.frame
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import ChannelFrame
from aiormq.channel import Returning
from pydantic import BaseModel

from gridloop_common.messaging.errors import BrokerUnavailable, UnroutableError
from gridloop_common.messaging.metrics import PUBLISH_FAILURES, PUBLISH_SECONDS, PUBLISHED
from gridloop_common.observability.logging import current_correlation_id

__all__ = ["CORRELATION_HEADER", "Publisher", "encode_content_header"]

CORRELATION_HEADER = "x-correlation-id"

_FRAME_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_FRAME_END = b"\xce"
_FRAME_HEADER = 2
_FRAME_BODY = 3
_HEADER_FRAME_PREFIX = struct.Struct(">HHQH")  # class id, weight, body size, property flags
_BASIC_CLASS_ID = 60
_TIMESTAMP = struct.Struct(">Q")
_LONG = struct.Struct(">I")
# Property flags of the AMQP 0-9-1 basic class (the bits pamqp sets for the same properties).
_CONTENT_TYPE = 0x8000
_HEADERS = 0x2000
_DELIVERY_MODE = 0x1000
_CORRELATION_ID = 0x0400
_REPLY_TO = 0x0200
_EXPIRATION = 0x0100
_MESSAGE_ID = 0x0080
_TIMESTAMP_FLAG = 0x0040
_APP_ID = 0x0008
_PUBLISH_FRAME_CACHE_SIZE = 1024


def _short_string(value: str) -> bytes:
    encoded = value.encode("utf-8")
    if len(encoded) > 255:
        raise TypeError("string exceeds maximum length of 255 bytes")  # as pamqp says it
    return bytes((len(encoded),)) + encoded


def encode_content_header(
    *,
    channel_number: int,
    body_size: int,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    delivery_mode: int | None,
    correlation_id: str | None,
    reply_to: str | None,
    expiration: str | None,
    message_id: str | None,
    timestamp: int | None,
    app_id: str | None,
) -> bytes:
    """The content header frame pamqp would marshal for these basic properties, without its per-field dispatch.

    Empty strings are left out, as pamqp leaves them out; the headers table is encoded by pamqp itself.
    """
    flags = 0
    parts: list[bytes] = []
    if content_type:
        flags |= _CONTENT_TYPE
        parts.append(_short_string(content_type))
    if headers is not None:
        flags |= _HEADERS
        parts.append(_field_table(headers))
    if delivery_mode is not None:
        flags |= _DELIVERY_MODE
        parts.append(bytes((delivery_mode,)))
    if correlation_id:
        flags |= _CORRELATION_ID
        parts.append(_short_string(correlation_id))
    if reply_to:
        flags |= _REPLY_TO
        parts.append(_short_string(reply_to))
    if expiration:
        flags |= _EXPIRATION
        parts.append(_short_string(expiration))
    if message_id:
        flags |= _MESSAGE_ID
        parts.append(_short_string(message_id))
    if timestamp is not None:
        flags |= _TIMESTAMP_FLAG
        parts.append(_TIMESTAMP.pack(timestamp))
    if app_id:
        flags |= _APP_ID
        parts.append(_short_string(app_id))
    payload = _HEADER_FRAME_PREFIX.pack(_BASIC_CLASS_ID, 0, body_size, flags) + b"".join(parts)
    return _FRAME_HEAD.pack(_FRAME_HEADER, channel_number, len(payload)) + payload + _FRAME_END


def _field_table(headers: Mapping[str, Any]) -> bytes:
    """pamqp's field table encoding; all-``str`` tables (the usual ones) without its per-value dispatch."""
    parts = []
    for key, value in sorted(headers.items()):
        if type(value) is not str:
            return pamqp.encode.field_table(dict(headers))
        encoded_key = key.encode("utf-8")
        if len(encoded_key) > 128:  # pamqp truncates such keys (and says so)
            return pamqp.encode.field_table(dict(headers))
        encoded = value.encode("utf-8")
        parts.append(bytes((len(encoded_key),)) + encoded_key + b"S" + _LONG.pack(len(encoded)) + encoded)
    table = b"".join(parts)
    return _LONG.pack(len(table)) + table


def _encode_body(channel_number: int, body: bytes, max_content_size: int) -> bytes:
    """The content body frames of ``body``, split as aiormq splits them."""
    if not body:
        return b""
    if len(body) < max_content_size:
        return _FRAME_HEAD.pack(_FRAME_BODY, channel_number, len(body)) + body + _FRAME_END
    chunks = [body[start : start + max_content_size] for start in range(0, len(body), max_content_size)]
    return b"".join(_FRAME_HEAD.pack(_FRAME_BODY, channel_number, len(chunk)) + chunk + _FRAME_END for chunk in chunks)


class _Batch:
    """Publishes waiting for the same write on one channel, then waiting for their confirms.

    ``entries`` are (frames, message id, confirmation, deadline); once written, only what the
    deadline timer needs is kept: ``waiting`` holds (confirmation, deadline, message id, delivery tag).
    """

    __slots__ = ("channel", "entries", "timer", "waiting")

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel
        self.entries: list[tuple[bytes, str, asyncio.Future[Any], float]] = []
        self.waiting: list[tuple[asyncio.Future[Any], float, str, int]] = []
        self.timer: asyncio.TimerHandle | None = None


class Publisher:
    """Publishes persistent messages and returns only once the broker has confirmed them.

    Raises ``UnroutableError`` when no queue is bound for the routing key and ``BrokerUnavailable``
    when the broker cannot be reached or does not confirm within ``confirm_timeout_s``.
    """

    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        channel: AbstractRobustChannel,
        source: str,
        confirm_timeout_s: float = 5.0,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._source = source
        self._confirm_timeout_s = confirm_timeout_s
        # Label lookups cost a lock and a dict walk per call; resolve once per exchange.
        self._metrics: dict[str, tuple[Any, Any]] = {}
        # Basic.Publish method frames by (channel number, exchange, routing key): the same few keys recur.
        self._publish_frames: dict[tuple[int, str, str], bytes] = {}
        self._batch: _Batch | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        # Confirmations the deadline timer cancelled, until their publish has seen it.
        self._expired: set[asyncio.Future[Any]] = set()
        self._watched: aiormq.Channel | None = None

    async def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes | BaseModel,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration_s: float | None = None,
        persistent: bool = True,
    ) -> str:
        """Publish one message and wait for its confirm. Returns the message id."""
        payload = body.model_dump_json().encode() if isinstance(body, BaseModel) else body
        message_id = message_id or os.urandom(16).hex()
        all_headers: dict[str, Any] = {"x-source": self._source, **(headers or {})}
        trace = current_correlation_id()
        if trace is not None:
            all_headers.setdefault(CORRELATION_HEADER, trace)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._confirm_timeout_s
        confirmation: asyncio.Future[Any] | None = None
        try:
            if not self._connection.connected.is_set():
                # While the robust connection is reconnecting, wait for it within the same deadline.
                async with asyncio.timeout_at(deadline):
                    await self._connection.connected.wait()
            channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
            number = channel.number
            frames = self._publish_frame(number, exchange, routing_key) + encode_content_header(
                channel_number=number,
                body_size=len(payload),
                content_type="application/json",
                headers=all_headers,
                delivery_mode=2 if persistent else 1,
                correlation_id=correlation_id,
                reply_to=reply_to,
                expiration=str(max(1, int(expiration_s * 1000))) if expiration_s is not None else None,
                message_id=message_id,
                timestamp=int(time.time()),
                app_id=self._source,
            )
            frames += _encode_body(number, payload, channel.max_content_size)
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            self._watch(channel)
            confirmation = loop.create_future()
            self._enqueue(channel, (frames, message_id, confirmation, deadline))
            try:
                result = await confirmation
            except asyncio.CancelledError:
                # The batch's deadline timer cancels a confirmation it gave up on; anything else is a
                # cancellation of this task and stays one.
                if confirmation in self._expired:
                    self._expired.discard(confirmation)
                    task = asyncio.current_task()
                    if task is None or not task.cancelling():
                        raise TimeoutError from None
                raise
        except aiormq.exceptions.PublishError as error:
            PUBLISH_FAILURES.labels(exchange, "unroutable").inc()
            raise UnroutableError(f"no queue bound on exchange {exchange!r} for routing key {routing_key!r}") from error
        except TimeoutError as error:
            PUBLISH_FAILURES.labels(exchange, "timeout").inc()
            raise BrokerUnavailable(f"no publisher confirm within {self._confirm_timeout_s} s") from error
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
            RuntimeError,
        ) as error:
            PUBLISH_FAILURES.labels(exchange, "connection").inc()
            raise BrokerUnavailable(f"broker unavailable: {error!r}") from error
        if not isinstance(result, aiormq.spec.Basic.Ack):
            PUBLISH_FAILURES.labels(exchange, "nack").inc()
            raise BrokerUnavailable(f"broker refused the message ({type(result).__name__})")
        timing, count = self._metrics.get(exchange) or self._metrics.setdefault(
            exchange, (PUBLISH_SECONDS.labels(exchange), PUBLISHED.labels(exchange))
        )
        timing.observe(time.perf_counter() - started)
        count.inc()
        return message_id

    def _publish_frame(self, channel_number: int, exchange: str, routing_key: str) -> bytes:
        key = (channel_number, exchange, routing_key)
        frame = self._publish_frames.get(key)
        if frame is None:
            # pamqp validates the exchange and routing key and marshals the method frame once per key.
            frame = pamqp.frame.marshal(
                aiormq.spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True), channel_number
            )
            if len(self._publish_frames) >= _PUBLISH_FRAME_CACHE_SIZE:
                self._publish_frames.clear()
            self._publish_frames[key] = frame
        return frame

    def _enqueue(self, channel: aiormq.Channel, entry: tuple[bytes, str, asyncio.Future[Any], float]) -> None:
        """Add a publish to the open batch of its channel; the first one of a batch schedules its write."""
        batch = self._batch
        if batch is None or batch.channel is not channel:
            batch = self._batch = _Batch(channel)
            # The flush task's first step runs after everything already runnable in this turn of the loop,
            # so the publishes of every request handled in the same turn share one write.
            flush = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        batch.entries.append(entry)

    async def _flush(self, batch: _Batch) -> None:
        """Give the batch's publishes their delivery tags and hand their frames to the writer as one frame."""
        if self._batch is batch:
            self._batch = None
        channel = batch.channel
        # Publishes cancelled before this point were never sent: they get no delivery tag.
        entries = [entry for entry in batch.entries if not entry[2].done()]
        batch.entries = []
        if not entries:
            return
        assigned: list[int] = []
        sent = False
        try:
            # The channel lock orders this write with aiormq's own basic_publish on the same channel (the
            # delivery tag is the position of the publish on the wire); it refuses a closed channel, so
            # nothing is registered on a channel whose close has already failed what it had pending.
            async with channel.lock:
                parts: list[bytes] = []
                waiting = batch.waiting
                for frames, message_id, confirmation, deadline in entries:
                    if confirmation.done():
                        continue
                    channel.delivery_tag += 1
                    tag = channel.delivery_tag
                    assigned.append(tag)
                    channel.confirmations[tag] = confirmation
                    # A basic.return names the message id only; aiormq finds the delivery tag through this.
                    channel.message_id_delivery_tag[message_id] = tag
                    waiting.append((confirmation, deadline, message_id, tag))
                    parts.append(frames)
                await channel.write_queue.put(ChannelFrame(payload=b"".join(parts), should_close=False))
                sent = True
        except BaseException as error:
            if not sent:
                # The broker has not seen these publishes: take their tags back (nothing else took one
                # while the lock was held) and fail them.
                channel.delivery_tag -= len(assigned)
                for _, _, message_id, tag in batch.waiting:
                    channel.confirmations.pop(tag, None)
                    if channel.message_id_delivery_tag.get(message_id) == tag:
                        del channel.message_id_delivery_tag[message_id]
                batch.waiting = []
                failure = (
                    error
                    if isinstance(error, Exception)
                    else aiormq.exceptions.ChannelInvalidStateError("publish not sent: the publisher was stopped")
                )
                for _, _, confirmation, _ in entries:
                    if not confirmation.done():
                        confirmation.set_exception(failure)
            if not isinstance(error, Exception):
                raise
        if batch.waiting:
            # One timer per batch enforces every publish's confirm deadline (cheaper than one per publish)
            # and then forgets the batch's message ids.
            deadline = min(deadline for _, deadline, _, _ in batch.waiting)
            batch.timer = asyncio.get_running_loop().call_at(deadline, self._expire, batch)

    def _watch(self, channel: aiormq.Channel) -> None:
        """Once per channel: when it closes (or its connection is lost), fail every confirm still pending."""
        if channel is self._watched:
            return
        self._watched = channel
        channel.closing.add_done_callback(functools.partial(_fail_pending, channel))

    def _expire(self, batch: _Batch) -> None:
        """Give up on the batch's confirms past their deadline and forget the message ids of the settled ones.

        Re-arms for the publishes still waiting before their own deadline.
        """
        now = asyncio.get_running_loop().time()
        channel = batch.channel
        by_message_id = channel.message_id_delivery_tag
        waiting = []
        for entry in batch.waiting:
            confirmation, deadline, message_id, tag = entry
            if not confirmation.done():
                if deadline > now:
                    waiting.append(entry)
                    continue
                self._expired.add(confirmation)
                confirmation.cancel()
            if by_message_id.get(message_id) == tag:
                del by_message_id[message_id]
        batch.waiting = waiting
        batch.timer = (
            asyncio.get_running_loop().call_at(min(entry[1] for entry in waiting), self._expire, batch)
            if waiting
            else None
        )


def _fail_pending(channel: aiormq.Channel, closing: asyncio.Future[Any]) -> None:
    reason = None if closing.cancelled() else closing.exception()
    failure = aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed before the confirm: {reason!r}")
    for confirmation in list(channel.confirmations.values()):
        if not confirmation.done() and not isinstance(confirmation, Returning):
            confirmation.set_exception(failure)
