"""The websocket endpoint: admission, one session per connection, its channels, limits and token expiry."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import Counter, Gauge
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gridloop_common.clock import Clock, SystemClock
from telemetry_ingest.api.auth import AuthenticationError, Authenticator, Identity
from telemetry_ingest.realtime.filters import FilterError, parse_filter, parse_select
from telemetry_ingest.realtime.hub import Binding, RealtimeHub, RealtimeUnavailable, RowChange
from telemetry_ingest.realtime.protocol import (
    CLOSE_TOO_BIG,
    PHOENIX_TOPIC,
    SERIALIZERS,
    Frame,
    FrameError,
    close_reason,
    decode_binary,
    decode_text,
    encode,
)

__all__ = ["JoinRate", "RealtimeLimits", "expiry_delay", "realtime_route"]

logger = logging.getLogger("telemetry_ingest.realtime")

# Delivery is never allowed to block the hub: a client this far behind is disconnected instead.
OUTBOX_LIMIT: Final = 10_000
EXPIRY_CHECK_MAX_S: Final = 86_400.0
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TRY_AGAIN_LATER: Final = 1013

CHANGES_DELIVERED = Counter(
    "gridloop_realtime_changes_delivered_total", "postgres_changes messages queued to websocket clients."
)
CLIENTS_DROPPED = Counter(
    "gridloop_realtime_clients_dropped_total", "Websocket clients disconnected for falling too far behind."
)
CONNECTED_CLIENTS = Gauge("gridloop_realtime_connected_clients", "Open realtime websocket connections.")
REFUSED = Counter(
    "gridloop_realtime_refused_total", "Realtime connections, joins and frames refused by a limit.", ["limit"]
)


@dataclass(frozen=True)
class RealtimeLimits:
    """What one client may hold (Supabase Realtime bounds the same things); see README.md for each."""

    bindings_per_join: int = 100
    bindings_per_socket: int = 500
    channels_per_socket: int = 100
    sockets_per_key: int = 500
    sockets_per_address: int = 20
    joins_per_second: float = 10.0
    frame_bytes: int = 1 << 20


class JoinRate:
    """A token bucket of joins: ``burst`` at once, then ``per_second``."""

    def __init__(self, *, per_second: float, burst: int, now: float) -> None:
        self._per_second = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._per_second)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def expiry_delay(claims: Mapping[str, Any], now: float) -> float | None:
    """Seconds until a token's ``exp`` (0 when past), None for a token that never expires."""
    expires = claims.get("exp")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return None
    return max(0.0, float(expires) - now)


def key_of(identity: Identity) -> str:
    """Who a connection counts against: the subject of a user's token, otherwise the key itself.

    The signature is decoded rather than compared as text: base64 padding appended to a key must not make
    it a different key.
    """
    subject = identity.claims.get("sub")
    if isinstance(subject, str) and subject:
        return f"{identity.role}:sub:{subject}"
    signature = identity.token.rsplit(".", 1)[-1].rstrip("=")
    try:
        decoded = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)).hex()
    except (binascii.Error, ValueError):
        decoded = signature
    return f"{identity.role}:key:{decoded}"


class _Connections:
    """Open sockets per key and per client address, so one client cannot take every connection."""

    def __init__(self, limits: RealtimeLimits) -> None:
        self._limits = limits
        self._by_key: Tally[str] = Tally()
        self._by_address: Tally[str] = Tally()

    def admit(self, key: str, address: str) -> str | None:
        """None and the connection counted, or why it is refused."""
        if self._by_key[key] >= self._limits.sockets_per_key:
            return f"too many connections for this key (limit {self._limits.sockets_per_key})"
        if self._by_address[address] >= self._limits.sockets_per_address:
            return f"too many connections from this address (limit {self._limits.sockets_per_address})"
        self._by_key[key] += 1
        self._by_address[address] += 1
        return None

    def release(self, key: str, address: str) -> None:
        for tally, name in ((self._by_key, key), (self._by_address, address)):
            tally[name] -= 1
            if tally[name] <= 0:
                del tally[name]


def _reply(topic: str, ref: str | None, join_ref: str | None, status: str, response: Mapping[str, Any]) -> Frame:
    return Frame(topic, "phx_reply", {"status": status, "response": dict(response)}, ref, join_ref)


def _system(topic: str, join_ref: str | None, *, extension: str, message: str, status: str) -> Frame:
    payload = {"channel": topic.removeprefix("realtime:"), "extension": extension, "message": message, "status": status}
    return Frame(topic, "system", payload, None, join_ref)


class _Channel:
    """A joined topic of one connection: its bindings, and a hub subscriber writing to the connection."""

    def __init__(
        self,
        *,
        session: _Session,
        topic: str,
        join_ref: str | None,
        bindings: list[Binding],
        row_key: Callable[[str, str], tuple[str, ...]],
    ) -> None:
        self.session = session
        self.topic = topic
        self.join_ref = join_ref
        self.bindings: Sequence[Binding] = bindings
        self._selects = {binding.id: binding.columns for binding in bindings}
        self._row_key = row_key
        self.expiry: asyncio.TimerHandle | None = None
        self.claims: Mapping[str, Any] = {}  # of the token the channel runs on; its exp ends the channel

    def deliver(self, change: RowChange, binding_ids: list[int], columns: list[dict[str, str]]) -> None:
        # Bindings with different ``select``s see different records: one message per distinct select.
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for binding_id in binding_ids:
            groups.setdefault(self._selects.get(binding_id), []).append(binding_id)
        for select, ids in groups.items():
            record: Mapping[str, Any] = change.record
            shown = columns
            if select is not None:
                kept = set(select) | set(self._row_key(change.schema, change.table))
                record = {name: value for name, value in change.record.items() if name in kept}
                shown = [column for column in columns if column["name"] in kept]
            data = {
                "schema": change.schema,
                "table": change.table,
                "commit_timestamp": change.commit_timestamp,
                # The wire format the Realtime server sends (type/record) and the names supabase-js hands
                # its callbacks (eventType/new/old): clients of either shape find what they read.
                "type": "INSERT",
                "eventType": "INSERT",
                "record": record,
                "new": record,
                "old": {},
                "columns": shown,
                "errors": None,
            }
            self.session.send(Frame(self.topic, "postgres_changes", {"data": data, "ids": ids}, None, self.join_ref))
            CHANGES_DELIVERED.inc()


class _Session:
    """One websocket connection: Phoenix channel joins, leaves, heartbeats and token refreshes."""

    def __init__(
        self,
        *,
        websocket: WebSocket,
        hub: RealtimeHub,
        authenticator: Authenticator,
        identity: Identity,
        vsn: str,
        limits: RealtimeLimits,
        clock: Clock,
    ) -> None:
        self._websocket = websocket
        self._clock = clock
        self._hub = hub
        self._authenticator = authenticator
        self._identity = identity
        self._vsn = vsn
        self._limits = limits
        self._channels: dict[str, _Channel] = {}
        self._outbox: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=OUTBOX_LIMIT)
        self._overflowed = False
        self._joins = JoinRate(
            per_second=limits.joins_per_second, burst=limits.channels_per_socket, now=clock.monotonic()
        )

    def send(self, frame: Frame) -> None:
        """Queue a message; a client too slow to keep up is disconnected rather than slowing the hub."""
        if self._overflowed:
            return
        try:
            self._outbox.put_nowait(frame)
        except asyncio.QueueFull:
            self._overflowed = True
            CLIENTS_DROPPED.inc()
            logger.warning("realtime client too slow; disconnecting", extra={"queued": self._outbox.qsize()})
            self._leave_all()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_forever(), name="realtime-writer")
        close: tuple[int, str] | None = None
        try:
            while not self._overflowed and close is None:
                message = await self._websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    frame = self._decode(message)
                except FrameError as error:
                    REFUSED.labels("frame").inc()
                    logger.info("realtime frame refused", extra={"reason": error.reason, "close_code": error.code})
                    close = (error.code, error.reason)
                    break
                await self._handle(frame)
                if writer.done():
                    return
        finally:
            self._leave_all()
            if close is not None and not self._outbox.full():
                # What was queued before the bad frame (replies, changes) still goes out, then the close.
                self._outbox.put_nowait(None)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 2.0)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if self._overflowed:
                close = (CLOSE_TRY_AGAIN_LATER, "client too slow")
            if close is not None:
                with contextlib.suppress(Exception):
                    await self._websocket.close(code=close[0], reason=close_reason(close[1]))

    def _decode(self, message: Mapping[str, Any]) -> Frame:
        text, data = message.get("text"), message.get("bytes")
        size = len(text) if text is not None else len(data or b"")
        if size > self._limits.frame_bytes:
            raise FrameError(CLOSE_TOO_BIG, f"frame larger than {self._limits.frame_bytes} bytes")
        if text is not None:
            return decode_text(text, self._vsn)
        return decode_binary(data or b"", self._vsn)

    async def _write_forever(self) -> None:
        while True:
            frame = await self._outbox.get()
            if frame is None:
                return
            await self._websocket.send_text(encode(frame, self._vsn))

    def _leave_all(self) -> None:
        for channel in self._channels.values():
            self._stop_expiry(channel)
            self._hub.unsubscribe(channel)
        self._channels.clear()

    async def _handle(self, frame: Frame) -> None:
        topic, event, ref = frame.topic, frame.event, frame.ref
        if topic == PHOENIX_TOPIC and event == "heartbeat":
            self.send(_reply(PHOENIX_TOPIC, ref, frame.join_ref, "ok", {}))
        elif event == "phx_join":
            await self._join(frame)
        elif topic not in self._channels:
            self.send(_reply(topic, ref, frame.join_ref, "error", {"reason": "unmatched topic"}))
        elif event == "phx_leave":
            # Phoenix order: the leave is acknowledged, then the channel is closed.
            self.send(_reply(topic, ref, frame.join_ref, "ok", {}))
            self._leave(topic)
        elif event == "access_token":
            self._refresh_token(topic, frame.payload)
        else:
            reason = f"event {event!r} is not supported by this server (postgres_changes only)"
            self.send(_reply(topic, ref, frame.join_ref, "error", {"reason": reason}))

    def _refuse(self, frame: Frame, limit: str, reason: str) -> None:
        REFUSED.labels(limit).inc()
        logger.info("realtime join refused", extra={"limit": limit, "reason": reason})
        self.send(_reply(frame.topic, frame.ref, frame.join_ref, "error", {"reason": reason}))

    async def _join(self, frame: Frame) -> None:
        topic, payload, join_ref = frame.topic, frame.payload, frame.join_ref or frame.ref
        limits = self._limits
        if not self._joins.take(self._clock.monotonic()):
            self._refuse(
                frame,
                "join_rate",
                f"ClientJoinRateLimitReached: more than {limits.joins_per_second:g} joins per second",
            )
            return
        identity = self._identity
        token = payload.get("access_token")
        if token is not None:
            try:
                identity = self._authenticator.identify(str(token))
            except AuthenticationError as error:
                self.send(_reply(topic, frame.ref, join_ref, "error", {"reason": f"Invalid token: {error.message}"}))
                return
        config = payload.get("config")
        config = {} if config is None else config
        requested = config.get("postgres_changes") if isinstance(config, dict) else None
        requested = [] if requested is None else requested
        if not isinstance(config, dict) or not isinstance(requested, list):
            reason = "config must be an object and config.postgres_changes a list of bindings"
            self.send(_reply(topic, frame.ref, join_ref, "error", {"reason": reason}))
            return
        if len(requested) > limits.bindings_per_join:
            self._refuse(
                frame,
                "bindings_per_join",
                f"too many postgres_changes bindings in one join: {len(requested)} (limit {limits.bindings_per_join})",
            )
            return
        others = [channel for name, channel in self._channels.items() if name != topic]
        if len(others) >= limits.channels_per_socket:
            self._refuse(
                frame,
                "channels_per_socket",
                f"ChannelRateLimitReached: too many channels on this connection (limit {limits.channels_per_socket})",
            )
            return
        held = sum(len(channel.bindings) for channel in others)
        if held + len(requested) > limits.bindings_per_socket:
            self._refuse(
                frame,
                "bindings_per_socket",
                f"too many postgres_changes bindings on this connection (limit {limits.bindings_per_socket})",
            )
            return
        try:
            bindings = [self._binding(item) for item in requested]
        except FilterError as error:
            self.send(_reply(topic, frame.ref, join_ref, "error", {"reason": str(error)}))
            return
        if topic in self._channels:
            # Phoenix semantics: joining a topic again replaces the earlier join.
            self._leave(topic)
        channel = _Channel(session=self, topic=topic, join_ref=join_ref, bindings=bindings, row_key=self._hub.row_key)
        try:
            await self._hub.subscribe(channel)
        except RealtimeUnavailable as error:
            self.send(_reply(topic, frame.ref, join_ref, "error", {"reason": str(error)}))
            return
        self._channels[topic] = channel
        self._schedule_expiry(channel, identity)
        self.send(
            _reply(topic, frame.ref, join_ref, "ok", {"postgres_changes": [binding.echo() for binding in bindings]})
        )
        if bindings:
            self.send(
                _system(topic, join_ref, extension="postgres_changes", message="Subscribed to PostgreSQL", status="ok")
            )

    def _binding(self, item: Any) -> Binding:
        if not isinstance(item, dict):
            raise FilterError("each postgres_changes entry is an object")
        event = str(item.get("event", ""))
        if event not in ("INSERT", "*"):
            raise FilterError(f"event {event!r} is not published: this server sends INSERT changes only")
        schema = str(item.get("schema") or "public")
        requested_table = item.get("table")
        table = None if requested_table in (None, "*") else str(requested_table)
        filter_text = item.get("filter")
        if filter_text is not None and not isinstance(filter_text, str):
            raise FilterError("filter is a string, e.g. device_id=eq.<uuid>")
        published = [name for published_schema, name in self._hub.published_tables if published_schema == schema]
        if not published:
            raise FilterError(f"schema {schema!r} has no published tables")
        if table is not None and table not in published:
            raise FilterError(f"table {schema}.{table} is not published; published: {', '.join(published)}")
        change_filter = None
        columns = None
        if filter_text is not None or item.get("select") is not None:
            if table is None:
                raise FilterError("a filter or select needs a table")
            column_types = self._hub.column_types(schema, table) or {}
            if filter_text is not None:
                change_filter = parse_filter(str(filter_text), column_types)
            if item.get("select") is not None:
                columns = parse_select(item["select"], column_types)
        return Binding(
            id=self._hub.next_binding_id(),
            event=event,
            schema=schema,
            table=table,
            # Echo exactly what the client sent: it compares the reply's fields with its own.
            requested_table=None if requested_table is None else str(requested_table),
            filter_text=None if filter_text is None else str(filter_text),
            change_filter=change_filter,
            columns=columns,
        )

    def _schedule_expiry(self, channel: _Channel, identity: Identity) -> None:
        """Close the channel when the token it was joined (or last refreshed) with expires, as Supabase does."""
        self._stop_expiry(channel)
        channel.claims = identity.claims
        delay = expiry_delay(identity.claims, self._clock.now().timestamp())
        if delay is not None:
            # Looked at again at least daily: a far-off exp must not overflow the loop's timer.
            channel.expiry = asyncio.get_running_loop().call_later(
                min(delay, EXPIRY_CHECK_MAX_S), self._expire, channel
            )

    @staticmethod
    def _stop_expiry(channel: _Channel) -> None:
        if channel.expiry is not None:
            channel.expiry.cancel()
            channel.expiry = None

    def _expire(self, channel: _Channel) -> None:
        if self._channels.get(channel.topic) is not channel:
            return
        delay = expiry_delay(channel.claims, self._clock.now().timestamp())
        if delay is not None and delay > 0:
            channel.expiry = asyncio.get_running_loop().call_later(
                min(delay, EXPIRY_CHECK_MAX_S), self._expire, channel
            )
            return
        logger.info("realtime channel token expired", extra={"topic": channel.topic})
        message = "Token has expired"
        self.send(_system(channel.topic, channel.join_ref, extension="system", message=message, status="error"))
        self._leave(channel.topic)

    def _leave(self, topic: str) -> None:
        channel = self._channels.pop(topic, None)
        if channel is not None:
            self._stop_expiry(channel)
            self._hub.unsubscribe(channel)
            # Phoenix sends phx_close with the join's ref as both ref and join_ref.
            self.send(Frame(topic, "phx_close", {}, channel.join_ref, channel.join_ref))

    def _refresh_token(self, topic: str, payload: Mapping[str, Any]) -> None:
        channel = self._channels[topic]
        try:
            identity = self._authenticator.identify(str(payload.get("access_token")))
        except AuthenticationError as error:
            # As Supabase Realtime does: tell the channel why, then close it.
            message = f"Invalid token: {error.message}"
            self.send(_system(topic, channel.join_ref, extension="system", message=message, status="error"))
            self._leave(topic)
            return
        self._schedule_expiry(channel, identity)


def _client_address(websocket: WebSocket) -> str:
    return websocket.client.host if websocket.client is not None else "unknown"


async def _refuse_connection(websocket: WebSocket, code: int, reason: str) -> None:
    """Open, then close at once with the reason: a client sees why in the close frame (an HTTP denial it may
    not), and uvicorn's sans-io websocket logs an ASGI error for every denial response."""
    logger.info("realtime connection refused", extra={"reason": reason, "close_code": code})
    await websocket.accept()
    await websocket.close(code=code, reason=close_reason(reason))


def realtime_route(
    hub: RealtimeHub,
    jwt_secret: str,
    *,
    path: str = "/realtime/v1/websocket",
    limits: RealtimeLimits | None = None,
    clock: Clock | None = None,
) -> WebSocketRoute:
    """The Supabase Realtime websocket endpoint; the ``apikey`` query parameter must be a valid API key.

    ``vsn`` picks the serializer (1.0.0 when absent, as Phoenix does); another version is closed at once with
    1008 and the reason, a connection past a per-key or per-address limit with 1013 (try again later).
    """
    clock = clock or SystemClock()
    authenticator = Authenticator(jwt_secret, clock=clock)
    limits = limits or RealtimeLimits()
    connections = _Connections(limits)

    async def endpoint(websocket: WebSocket) -> None:
        token = websocket.query_params.get("apikey")
        try:
            if not token:
                raise AuthenticationError("PGRST302", "No API key found in request", invalid_token=False)
            identity = authenticator.identify(token)
        except AuthenticationError as error:
            logger.info("realtime connection refused", extra={"reason": error.message})
            # Closing before accepting refuses the websocket handshake (HTTP 403).
            await websocket.close(code=1008)
            return
        vsn = websocket.query_params.get("vsn") or "1.0.0"
        if vsn not in SERIALIZERS:
            reason = f"unsupported vsn {vsn[:32]!r}: this server speaks {' and '.join(SERIALIZERS)}"
            await _refuse_connection(websocket, CLOSE_POLICY_VIOLATION, reason)
            return
        key, address = key_of(identity), _client_address(websocket)
        refusal = connections.admit(key, address)
        if refusal is not None:
            REFUSED.labels("sockets").inc()
            await _refuse_connection(websocket, CLOSE_TRY_AGAIN_LATER, refusal)
            return
        try:
            await websocket.accept()
            CONNECTED_CLIENTS.inc()
            try:
                session = _Session(
                    websocket=websocket,
                    hub=hub,
                    authenticator=authenticator,
                    identity=identity,
                    vsn=vsn,
                    limits=limits,
                    clock=clock,
                )
                await session.run()
            finally:
                CONNECTED_CLIENTS.dec()
        finally:
            connections.release(key, address)

    return WebSocketRoute(path, endpoint)
