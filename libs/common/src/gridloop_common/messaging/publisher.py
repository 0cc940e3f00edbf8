"""Publishing the broker has taken responsibility for: persistent, confirmed, never silently unroutable.

Concurrent publishes on one channel are coalesced: each publish encodes its own frames, and the ones
made in the same turn of the event loop go to the connection's writer as one write (one syscall instead
of one per message). The first publish of a turn queues that write itself, so a publish is written as
soon as ``basic_publish`` would write it, not a turn of the event loop later. Each message still gets
its own delivery tag and waits for its own confirm, exactly as ``aiormq.Channel.basic_publish`` would
register it, so a return (unroutable) or a nack reaches only the publish it belongs to, and a connection
lost before the confirm fails every publish still waiting.

This is a fast path beside aio-pika's ``Exchange.publish`` (docs/architecture.md, "Fast paths"): the frames
are built in ``_wire``, and ``tests/messaging/test_wire.py`` holds them and the aiormq internals used here
to what aio-pika and aiormq do themselves.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Mapping
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.channel import Returning
from pydantic import BaseModel

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.messaging._wire import encode_body, encode_content_header, encode_publish_method
from gridloop_common.messaging.errors import BrokerUnavailable, UnroutableError
from gridloop_common.messaging.metrics import PUBLISH_FAILURES, PUBLISH_SECONDS, PUBLISHED
from gridloop_common.observability.logging import current_correlation_id

__all__ = ["CORRELATION_HEADER", "Publisher", "encode_content_header"]

CORRELATION_HEADER = "x-correlation-id"

_PUBLISH_FRAME_CACHE_SIZE = 1024


class _PendingWrite:
    """The frames of the publishes made on one channel in one turn of the event loop, as one queued write.

    The first publish puts it in the connection's write queue at once, as ``basic_publish`` puts its own
    frame, so the writer sends it in the next turn; the publishes made in the rest of that turn join it
    (``Publisher._join``). aiormq's writer reads ``payload`` exactly once, in the step that takes the write
    from the queue, then ``should_close`` and ``should_drain``; it never awaits anything for this write.

    ``entries`` are [frames, confirmation, deadline, message id, delivery tag], in delivery-tag order; the
    tags are consecutive, because a publish only joins while no other publish on the channel took a tag
    after the write's last one.
    """

    __slots__ = ("channel", "drain_future", "entries", "open", "should_close", "taken", "timer")

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel
        self.entries: list[list[Any]] = []
        self.open = True  # to publishes joining it
        self.taken = False  # by the writer
        self.timer: asyncio.TimerHandle | None = None
        self.should_close = False
        self.drain_future: asyncio.Future[Any] | None = None

    @property
    def last_tag(self) -> int:
        tag: int = self.entries[-1][4]
        return tag

    @property
    def payload(self) -> bytes:
        self.open = False
        self.taken = True
        self._withdraw_settled()
        payload = b"".join(entry[0] for entry in self.entries)
        for entry in self.entries:
            entry[0] = b""
        return payload

    @property
    def should_drain(self) -> bool:
        return False

    def drain(self) -> None:
        return None

    def close(self) -> None:
        self.open = False

    def add(self, frames: bytes, message_id: str, confirmation: asyncio.Future[Any], deadline: float) -> None:
        """Register the publish as ``basic_publish`` does (the channel's next delivery tag) and add its frames."""
        channel = self.channel
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        channel.confirmations[tag] = confirmation
        # A basic.return names the message id only; aiormq finds the delivery tag through this.
        channel.message_id_delivery_tag[message_id] = tag
        self.entries.append([frames, confirmation, deadline, message_id, tag])

    def _withdraw_settled(self) -> None:
        """Leave out the publishes already settled (cancelled, expired, channel closed) before anything was sent.

        Their tags are given to the publishes after them, which is only right while no other publish on the
        channel has a tag after this write's last one; otherwise they are sent and their confirms ignored.
        """
        entries = self.entries
        channel = self.channel
        if not entries or all(not entry[1].done() for entry in entries) or channel.delivery_tag != entries[-1][4]:
            return
        confirmations = channel.confirmations
        by_message_id = channel.message_id_delivery_tag
        tag = entries[0][4]
        kept = []
        # Ascending: every key a publish moves down to has already been vacated.
        for entry in entries:
            old = entry[4]
            confirmations.pop(old, None)
            settled = entry[1].done()
            if by_message_id.get(entry[3]) == old:
                if settled:
                    del by_message_id[entry[3]]
                else:
                    by_message_id[entry[3]] = tag
            if settled:
                continue
            confirmations[tag] = entry[1]
            entry[4] = tag
            kept.append(entry)
            tag += 1
        channel.delivery_tag = tag - 1
        self.entries = kept


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
        clock: Clock | None = None,
    ) -> None:
        self._connection = connection
        self._clock: Clock = clock or SystemClock()
        self._channel = channel
        self._source = source
        self._confirm_timeout_s = confirm_timeout_s
        # Label lookups cost a lock and a dict walk per call; resolve once per exchange.
        self._metrics: dict[str, tuple[Any, Any]] = {}
        # Basic.Publish method frames by (channel number, exchange, routing key): the same few keys recur.
        self._publish_frames: dict[tuple[int, str, str], bytes] = {}
        self._open: _PendingWrite | None = None
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
                timestamp=int(self._clock.now().timestamp()),
                app_id=self._source,
            )
            frames += encode_body(number, payload, channel.max_content_size)
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            self._watch(channel)
            confirmation = loop.create_future()
            if not self._join(channel, frames, message_id, confirmation, deadline):
                async with asyncio.timeout_at(deadline):
                    await self._write(channel, frames, message_id, confirmation, deadline)
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
            frame = encode_publish_method(channel_number, exchange, routing_key)
            if len(self._publish_frames) >= _PUBLISH_FRAME_CACHE_SIZE:
                self._publish_frames.clear()
            self._publish_frames[key] = frame
        return frame

    def _join(
        self,
        channel: aiormq.Channel,
        frames: bytes,
        message_id: str,
        confirmation: asyncio.Future[Any],
        deadline: float,
    ) -> bool:
        """Add the publish to this turn's write on its channel, if there is one and its place on the wire is right.

        The delivery tag is the position of the publish among the channel's publishes on the wire, so it may
        join only while no other publish on the channel (aiormq's own ``basic_publish`` included) has taken
        a tag since the write's last one: then nothing queued behind the write carries a publish.
        """
        pending = self._open
        if (
            pending is None
            or not pending.open
            or pending.channel is not channel
            or not pending.entries
            or channel.delivery_tag != pending.last_tag
            or channel.is_closed
        ):
            return False
        pending.add(frames, message_id, confirmation, deadline)
        return True

    async def _write(
        self,
        channel: aiormq.Channel,
        frames: bytes,
        message_id: str,
        confirmation: asyncio.Future[Any],
        deadline: float,
    ) -> None:
        """Queue a new write with this publish: without waiting, unless the lock is held or the queue is full."""
        # The lock orders this write with aiormq's own basic_publish on the same channel; it refuses a
        # closed channel, so nothing is registered on a channel whose close already failed what it had.
        async with channel.lock:
            # A write may have been queued while this publish waited for the lock.
            if self._join(channel, frames, message_id, confirmation, deadline):
                return
            pending = _PendingWrite(channel)
            pending.add(frames, message_id, confirmation, deadline)
            try:
                await channel.write_queue.put(pending)
            except BaseException:
                # Not queued: the broker never sees it and nothing joined it. Nothing else took a tag while
                # the lock was held, so the tag goes back.
                channel.delivery_tag -= 1
                channel.confirmations.pop(pending.last_tag, None)
                if channel.message_id_delivery_tag.get(message_id) == pending.last_tag:
                    del channel.message_id_delivery_tag[message_id]
                raise
            loop = asyncio.get_running_loop()
            self._open = pending
            # Publishes of later turns start a write of their own, even if the writer has not run yet.
            loop.call_soon(pending.close)
            # One timer per write enforces the confirm deadline of every publish in it (cheaper than one per
            # publish), re-arming for the ones that joined later, then forgets their message ids.
            pending.timer = loop.call_at(deadline, self._expire, pending)

    def _watch(self, channel: aiormq.Channel) -> None:
        """Once per channel: when it closes (or its connection is lost), fail every confirm still pending."""
        if channel is self._watched:
            return
        self._watched = channel
        channel.closing.add_done_callback(functools.partial(_fail_pending, channel))

    def _expire(self, pending: _PendingWrite) -> None:
        """Give up on the write's confirms past their deadline and forget the message ids of the settled ones.

        Re-arms for the publishes still waiting before their own deadline.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        by_message_id = pending.channel.message_id_delivery_tag
        waiting = []
        for entry in pending.entries:
            _, confirmation, deadline, message_id, tag = entry
            if not confirmation.done():
                if deadline > now:
                    waiting.append(entry)
                    continue
                self._expired.add(confirmation)
                confirmation.cancel()
            if by_message_id.get(message_id) == tag:
                del by_message_id[message_id]
        if pending.taken:
            # Until the writer takes the write, every entry stays: it leaves the settled ones out then.
            pending.entries = waiting
        pending.timer = loop.call_at(min(entry[2] for entry in waiting), self._expire, pending) if waiting else None


def _fail_pending(channel: aiormq.Channel, closing: asyncio.Future[Any]) -> None:
    reason = None if closing.cancelled() else closing.exception()
    failure = aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed before the confirm: {reason!r}")
    for confirmation in list(channel.confirmations.values()):
        if not confirmation.done() and not isinstance(confirmation, Returning):
            confirmation.set_exception(failure)
