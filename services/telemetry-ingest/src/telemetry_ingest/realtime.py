"""Supabase Realtime (Phoenix channels v1.0.0 JSON) postgres_changes INSERT subscriptions, fed by LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Protocol, Self

import asyncpg
from prometheus_client import Counter, Gauge
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from telemetry_ingest.auth import AuthenticationError, Authenticator

__all__ = [
    "NOTIFY_CHANNEL",
    "PUBLISHED_TABLES",
    "Binding",
    "ChangeFilter",
    "FilterError",
    "RealtimeHub",
    "RealtimeUnavailable",
    "RowChange",
    "parse_filter",
    "realtime_route",
]

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL: Final = "flux_changes"  # the channel migration 0004's trigger notifies on
PUBLISHED_TABLES: Final = (("flux", "mg_bess_readings"), ("flux", "mg_meter_readings"))
PHOENIX_TOPIC: Final = "phoenix"
# Delivery is never allowed to block the hub: a client this far behind is disconnected instead.
OUTBOX_LIMIT: Final = 10_000
# How long a replica's registered interest in a table lasts unless refreshed (migration 0009); the hub
# refreshes at a third of it, so one missed refresh never lets a live subscription lapse.
INTEREST_TTL_S: Final = 60.0
# What a lost or refused database connection raises; the hub logs these and retries, anything else is a bug.
_DATABASE_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

CHANGES_DELIVERED = Counter(
    "gridloop_realtime_changes_delivered_total", "postgres_changes messages queued to websocket clients."
)
CLIENTS_DROPPED = Counter(
    "gridloop_realtime_clients_dropped_total", "Websocket clients disconnected for falling too far behind."
)
CONNECTED_CLIENTS = Gauge("gridloop_realtime_connected_clients", "Open realtime websocket connections.")


class RealtimeUnavailable(RuntimeError):
    """The hub cannot serve a new subscription now (its database connection is down)."""


class FilterError(ValueError):
    """A subscription's filter or target cannot be served; the text goes back to the client."""


_NUMERIC_TYPES: Final = frozenset({"int2", "int4", "int8", "float4", "float8", "numeric"})
_TIME_TYPES: Final = frozenset({"timestamptz", "timestamp", "date"})


def _coerce(type_name: str, value: Any) -> Any:
    """A value (from a filter's text or a record's JSON) as a comparable Python value of the column's type."""
    if value is None:
        return None
    if type_name in _NUMERIC_TYPES:
        return float(value)
    if type_name == "uuid":
        return uuid.UUID(str(value))
    if type_name in _TIME_TYPES:
        return datetime.fromisoformat(str(value))
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"{value!r} is not a boolean")
        return lowered == "true"
    return str(value)


_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": lambda left, right: bool(left == right),
    "neq": lambda left, right: bool(left != right),
    "lt": lambda left, right: bool(left < right),
    "lte": lambda left, right: bool(left <= right),
    "gt": lambda left, right: bool(left > right),
    "gte": lambda left, right: bool(left >= right),
}


@dataclass(frozen=True)
class ChangeFilter:
    """One ``column=operator.value`` filter as Supabase Realtime supports it (eq neq lt lte gt gte in)."""

    column: str
    operator: str
    values: tuple[Any, ...]  # coerced to the column's type; one value except for ``in``

    def matches(self, record: Mapping[str, Any], type_name: str) -> bool:
        """SQL semantics: a null on either side never matches."""
        try:
            value = _coerce(type_name, record.get(self.column))
        except (TypeError, ValueError):
            return False
        if value is None:
            return False
        if self.operator == "in":
            return value in self.values
        try:
            return _COMPARISONS[self.operator](value, self.values[0])
        except TypeError:
            return False


def parse_filter(text: str, column_types: Mapping[str, str]) -> ChangeFilter:
    """Parse ``device_id=eq.<uuid>`` or ``site=in.(a,b)`` against the table's columns."""
    column, separator, rest = text.partition("=")
    operator, dot, raw = rest.partition(".")
    if not separator or not dot or not column:
        raise FilterError(f"invalid filter {text!r}: expected column=operator.value")
    type_name = column_types.get(column)
    if type_name is None:
        raise FilterError(f"invalid filter {text!r}: no column {column!r}")
    if operator == "in":
        if not (raw.startswith("(") and raw.endswith(")")):
            raise FilterError(f"invalid filter {text!r}: in needs a list, e.g. in.(1,2)")
        items = [item.strip().strip('"') for item in raw[1:-1].split(",") if item.strip()]
    elif operator in _COMPARISONS:
        items = [raw]
    else:
        raise FilterError(f"invalid filter {text!r}: operator {operator!r} is not one of eq, neq, lt, lte, gt, gte, in")
    try:
        values = tuple(_coerce(type_name, item) for item in items)
    except (TypeError, ValueError) as error:
        raise FilterError(f"invalid filter {text!r}: {error}") from error
    return ChangeFilter(column=column, operator=operator, values=values)


@dataclass(frozen=True)
class Binding:
    """One postgres_changes subscription of a channel, and the id the server gave it."""

    id: int
    event: str  # INSERT or *
    schema: str
    table: str | None  # None: every published table of the schema
    requested_table: str | None  # as the client sent it ("*", a name or nothing)
    filter_text: str | None
    change_filter: ChangeFilter | None

    def echo(self) -> dict[str, Any]:
        """The binding as the join reply returns it: the client matches these fields one to one."""
        echoed: dict[str, Any] = {"id": self.id, "event": self.event, "schema": self.schema}
        if self.requested_table is not None:
            echoed["table"] = self.requested_table
        if self.filter_text is not None:
            echoed["filter"] = self.filter_text
        return echoed


@dataclass(frozen=True)
class RowChange:
    """One inserted row as the change feed announced it."""

    schema: str
    table: str
    commit_timestamp: str
    record: Mapping[str, Any]


class Subscriber(Protocol):
    """What the hub fans changes out to (a joined channel of one websocket)."""

    bindings: Sequence[Binding]

    def deliver(self, change: RowChange, binding_ids: list[int], columns: list[dict[str, str]]) -> None:
        """Queue a change for sending; must not block."""


class RealtimeHub:
    """LISTENs on one dedicated connection and fans each inserted row out to the matching subscribers.

    Use as an async context manager. When the LISTEN connection is lost it reconnects with backoff;
    changes committed meanwhile are not replayed (as with Supabase Realtime), which is logged.

    The database announces a table's inserts only while some replica has registered interest in it
    (``ingest.realtime_interest``, migration 0009): ``subscribe`` registers the tables a subscriber's
    bindings cover before it returns, a background task keeps the registrations of watched tables alive
    and drops the rest, and closing the hub removes them.
    """

    def __init__(
        self,
        database_url: str,
        *,
        channel: str = NOTIFY_CHANNEL,
        tables: Sequence[tuple[str, str]] = PUBLISHED_TABLES,
        reconnect_max_s: float = 5.0,
        interest_ttl_s: float = INTEREST_TTL_S,
    ) -> None:
        self._database_url = database_url
        self._channel = channel
        self._tables = tuple(tables)
        self._reconnect_max_s = reconnect_max_s
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._subscribers: set[Subscriber] = set()
        self._columns: dict[tuple[str, str], dict[str, str]] = {}
        self._binding_ids = itertools.count(1)
        self._replica = uuid.uuid4()
        self._interest_ttl_s = interest_ttl_s
        # Tables this replica has registered and the monotonic time by which the registration must be renewed.
        self._registered: dict[tuple[str, str], float] = {}
        self._statements = asyncio.Lock()  # one query at a time on the LISTEN connection
        self._keeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._connect()
        self._supervisor = asyncio.create_task(self._reconnect_forever(), name="realtime-listen")
        self._keeper = asyncio.create_task(self._keep_interest_forever(), name="realtime-interest")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in (self._keeper, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                # Best effort: rows left behind (a lost connection, a killed process) expire by themselves.
                await self._connection.execute(
                    "DELETE FROM ingest.realtime_interest WHERE replica = $1", self._replica, timeout=2.0
                )
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2.0)
            self._connection = None

    async def ready(self) -> bool:
        """Readiness check: the LISTEN connection is open."""
        return self._connection is not None and not self._connection.is_closed()

    @property
    def published_tables(self) -> tuple[tuple[str, str], ...]:
        return self._tables

    def column_types(self, schema: str, table: str) -> dict[str, str] | None:
        """Column name -> PostgreSQL type name of a published table, None when it is not published."""
        return self._columns.get((schema, table))

    def next_binding_id(self) -> int:
        return next(self._binding_ids)

    async def subscribe(self, subscriber: Subscriber) -> None:
        """Start fanning changes out to ``subscriber``, once the database announces every table it watches.

        Raises ``RealtimeUnavailable`` when the interest cannot be registered (database unreachable).
        """
        self._subscribers.add(subscriber)
        loop = asyncio.get_running_loop()
        missing = [table for table in self._tables_of(subscriber) if self._registered.get(table, 0.0) <= loop.time()]
        if not missing:
            return
        try:
            await self._register(missing)
        except _DATABASE_ERRORS as error:
            self._subscribers.discard(subscriber)
            raise RealtimeUnavailable(f"realtime is unavailable: {error}") from error

    def unsubscribe(self, subscriber: Subscriber) -> None:
        # The registration lapses on the keeper's next round, not here: a client that rejoins at once
        # (token refresh, reconnect) keeps its change feed without a gap.
        self._subscribers.discard(subscriber)

    def _tables_of(self, subscriber: Subscriber) -> set[tuple[str, str]]:
        tables: set[tuple[str, str]] = set()
        for binding in subscriber.bindings:
            for schema, table in self._tables:
                if schema == binding.schema and binding.table in (None, table):
                    tables.add((schema, table))
        return tables

    def _watched_tables(self) -> set[tuple[str, str]]:
        tables: set[tuple[str, str]] = set()
        for subscriber in self._subscribers:
            tables |= self._tables_of(subscriber)
        return tables

    async def _register(self, tables: Sequence[tuple[str, str]]) -> None:
        connection = self._connection
        if connection is None or connection.is_closed():
            raise asyncpg.InterfaceError("the realtime database connection is down")
        renew_by = asyncio.get_running_loop().time() + self._interest_ttl_s / 3
        async with self._statements:
            await connection.execute(
                """
                INSERT INTO ingest.realtime_interest (replica, schema_name, table_name, expires_at)
                SELECT $1, schema_name, table_name, clock_timestamp() + make_interval(secs => $4)
                FROM unnest($2::text[], $3::text[]) AS watched (schema_name, table_name)
                ON CONFLICT (schema_name, table_name, replica) DO UPDATE SET expires_at = excluded.expires_at
                """,
                self._replica,
                [schema for schema, _ in tables],
                [table for _, table in tables],
                self._interest_ttl_s,
            )
        for table in tables:
            self._registered[table] = renew_by

    async def _keep_interest_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interest_ttl_s / 3)
            watched = self._watched_tables()
            try:
                if watched:
                    await self._register(sorted(watched))
                dropped = [table for table in self._registered if table not in watched]
                if dropped and self._connection is not None:
                    async with self._statements:
                        await self._connection.execute(
                            """
                            DELETE FROM ingest.realtime_interest
                            WHERE replica = $1
                              AND (schema_name, table_name) IN (SELECT * FROM unnest($2::text[], $3::text[]))
                            """,
                            self._replica,
                            [schema for schema, _ in dropped],
                            [table for _, table in dropped],
                        )
                    for table in dropped:
                        self._registered.pop(table, None)
            except _DATABASE_ERRORS as error:
                # The reconnect loop re-registers once the connection is back.
                logger.warning("could not renew realtime interest", extra={"error": repr(error)})

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._database_url, server_settings={"application_name": "realtime"})
        try:
            rows = await connection.fetch(
                """
                SELECT namespace.nspname AS schema, class.relname AS table, attribute.attname AS column,
                       type.typname AS type
                FROM pg_attribute AS attribute
                JOIN pg_class AS class ON class.oid = attribute.attrelid
                JOIN pg_namespace AS namespace ON namespace.oid = class.relnamespace
                JOIN pg_type AS type ON type.oid = attribute.atttypid
                WHERE (namespace.nspname, class.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                  AND attribute.attnum > 0 AND NOT attribute.attisdropped
                ORDER BY attribute.attnum
                """,
                [schema for schema, _ in self._tables],
                [table for _, table in self._tables],
            )
            columns: dict[tuple[str, str], dict[str, str]] = {}
            for row in rows:
                columns.setdefault((row["schema"], row["table"]), {})[row["column"]] = row["type"]
            await connection.add_listener(self._channel, self._on_notification)
        except BaseException:
            await connection.close()
            raise
        self._columns = columns
        self._lost.clear()
        connection.add_termination_listener(lambda _: self._lost.set())
        self._connection = connection

    async def _reconnect_forever(self) -> None:
        while True:
            await self._lost.wait()
            logger.warning("realtime LISTEN connection lost; changes until it is back are not delivered")
            self._connection = None
            delay = 0.2
            while True:
                try:
                    await self._connect()
                    break
                except (OSError, asyncpg.PostgresError) as error:
                    logger.warning(
                        "realtime LISTEN reconnect failed", extra={"error": repr(error), "retry_in_s": delay}
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._reconnect_max_s)
            logger.info("realtime LISTEN connection back")
            watched = self._watched_tables()
            if watched:
                try:
                    await self._register(sorted(watched))
                except _DATABASE_ERRORS as error:
                    logger.warning("could not re-register realtime interest", extra={"error": repr(error)})

    def _on_notification(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            schema, table = str(message["schema"]), str(message["table"])
            commit_timestamp = str(message["commit_timestamp"])
            records = message["records"]
        except (ValueError, KeyError, TypeError) as error:
            logger.error("malformed change notification", extra={"error": repr(error)})
            return
        column_types = self._columns.get((schema, table), {})
        columns = [{"name": name, "type": type_name} for name, type_name in column_types.items()]
        for record in records:
            change = RowChange(schema=schema, table=table, commit_timestamp=commit_timestamp, record=record)
            for subscriber in list(self._subscribers):
                ids = [binding.id for binding in subscriber.bindings if _binding_matches(binding, change, column_types)]
                if ids:
                    subscriber.deliver(change, ids, columns)


def _binding_matches(binding: Binding, change: RowChange, column_types: Mapping[str, str]) -> bool:
    if binding.schema != change.schema or (binding.table is not None and binding.table != change.table):
        return False
    if binding.change_filter is None:
        return True
    type_name = column_types.get(binding.change_filter.column)
    return type_name is not None and binding.change_filter.matches(change.record, type_name)


def _reply(topic: str, ref: str | None, status: str, response: Mapping[str, Any]) -> dict[str, Any]:
    return {"event": "phx_reply", "topic": topic, "payload": {"status": status, "response": response}, "ref": ref}


class _Channel:
    """A joined topic of one connection: its bindings, and a hub subscriber writing to the connection."""

    def __init__(self, *, session: _Session, topic: str, join_ref: str | None, bindings: list[Binding]) -> None:
        self.session = session
        self.topic = topic
        self.join_ref = join_ref
        self.bindings: Sequence[Binding] = bindings

    def deliver(self, change: RowChange, binding_ids: list[int], columns: list[dict[str, str]]) -> None:
        data = {
            "schema": change.schema,
            "table": change.table,
            "commit_timestamp": change.commit_timestamp,
            # The wire format the Realtime server sends (type/record) and the names supabase-js hands
            # its callbacks (eventType/new/old): clients of either shape find what they read.
            "type": "INSERT",
            "eventType": "INSERT",
            "record": change.record,
            "new": change.record,
            "old": {},
            "columns": columns,
            "errors": None,
        }
        self.session.send(
            {
                "event": "postgres_changes",
                "topic": self.topic,
                "payload": {"data": data, "ids": binding_ids},
                "ref": None,
            }
        )
        CHANGES_DELIVERED.inc()


class _Session:
    """One websocket connection: Phoenix channel joins, leaves, heartbeats and token refreshes."""

    def __init__(self, *, websocket: WebSocket, hub: RealtimeHub, authenticator: Authenticator) -> None:
        self._websocket = websocket
        self._hub = hub
        self._authenticator = authenticator
        self._channels: dict[str, _Channel] = {}
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=OUTBOX_LIMIT)
        self._overflowed = False

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; a client too slow to keep up is disconnected rather than slowing the hub."""
        if self._overflowed:
            return
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self._overflowed = True
            CLIENTS_DROPPED.inc()
            logger.warning("realtime client too slow; disconnecting", extra={"queued": self._outbox.qsize()})
            self._leave_all()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_forever(), name="realtime-writer")
        try:
            while not self._overflowed:
                try:
                    text = await self._websocket.receive_text()
                except WebSocketDisconnect:
                    return
                await self._handle(text)
                if writer.done():
                    return
        finally:
            self._leave_all()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if self._overflowed:
                with contextlib.suppress(Exception):
                    await self._websocket.close(code=1013)

    async def _write_forever(self) -> None:
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            await self._websocket.send_text(json.dumps(message, separators=(",", ":"), default=str))

    def _leave_all(self) -> None:
        for channel in self._channels.values():
            self._hub.unsubscribe(channel)
        self._channels.clear()

    async def _handle(self, text: str) -> None:
        try:
            message = json.loads(text)
            topic, event = message["topic"], message["event"]
            payload = message.get("payload") or {}
            ref = message.get("ref")
            if not isinstance(topic, str) or not isinstance(event, str) or not isinstance(payload, dict):
                raise TypeError("topic and event must be strings and payload an object")
        except (ValueError, KeyError, TypeError) as error:
            logger.info("realtime client sent a malformed message", extra={"error": repr(error)})
            return
        if topic == PHOENIX_TOPIC and event == "heartbeat":
            self.send(_reply(PHOENIX_TOPIC, ref, "ok", {}))
        elif event == "phx_join":
            await self._join(topic, ref, message.get("join_ref") or ref, payload)
        elif topic not in self._channels:
            self.send(_reply(topic, ref, "error", {"reason": "unmatched topic"}))
        elif event == "phx_leave":
            # Phoenix order: the leave is acknowledged, then the channel is closed.
            self.send(_reply(topic, ref, "ok", {}))
            self._leave(topic)
        elif event == "access_token":
            self._refresh_token(topic, payload)
        else:
            self.send(_reply(topic, ref, "error", {"reason": f"event {event!r} is not supported by this server"}))

    async def _join(self, topic: str, ref: str | None, join_ref: str | None, payload: Mapping[str, Any]) -> None:
        token = payload.get("access_token")
        if token is not None:
            try:
                self._authenticator.identify(str(token))
            except AuthenticationError as error:
                self.send(_reply(topic, ref, "error", {"reason": f"Invalid token: {error.message}"}))
                return
        config = payload.get("config") or {}
        requested = config.get("postgres_changes") or [] if isinstance(config, dict) else []
        try:
            bindings = [self._binding(item) for item in requested]
        except FilterError as error:
            self.send(_reply(topic, ref, "error", {"reason": str(error)}))
            return
        if topic in self._channels:
            # Phoenix semantics: joining a topic again replaces the earlier join.
            self._leave(topic)
        channel = _Channel(session=self, topic=topic, join_ref=join_ref, bindings=bindings)
        try:
            await self._hub.subscribe(channel)
        except RealtimeUnavailable as error:
            self.send(_reply(topic, ref, "error", {"reason": str(error)}))
            return
        self._channels[topic] = channel
        self.send(_reply(topic, ref, "ok", {"postgres_changes": [binding.echo() for binding in bindings]}))
        if bindings:
            self.send(
                {
                    "event": "system",
                    "topic": topic,
                    "payload": {
                        "channel": topic.removeprefix("realtime:"),
                        "extension": "postgres_changes",
                        "message": "Subscribed to PostgreSQL",
                        "status": "ok",
                    },
                    "ref": None,
                }
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
        published = [name for published_schema, name in self._hub.published_tables if published_schema == schema]
        if not published:
            raise FilterError(f"schema {schema!r} has no published tables")
        if table is not None and table not in published:
            raise FilterError(f"table {schema}.{table} is not published; published: {', '.join(published)}")
        change_filter = None
        if filter_text is not None:
            if table is None:
                raise FilterError("a filter needs a table")
            column_types = self._hub.column_types(schema, table) or {}
            change_filter = parse_filter(str(filter_text), column_types)
        return Binding(
            id=self._hub.next_binding_id(),
            event=event,
            schema=schema,
            table=table,
            # Echo exactly what the client sent: it compares the reply's fields with its own.
            requested_table=None if requested_table is None else str(requested_table),
            filter_text=None if filter_text is None else str(filter_text),
            change_filter=change_filter,
        )

    def _leave(self, topic: str) -> None:
        channel = self._channels.pop(topic, None)
        if channel is not None:
            self._hub.unsubscribe(channel)
            self.send({"event": "phx_close", "topic": topic, "payload": {}, "ref": channel.join_ref})

    def _refresh_token(self, topic: str, payload: Mapping[str, Any]) -> None:
        try:
            self._authenticator.identify(str(payload.get("access_token")))
        except AuthenticationError as error:
            # As Supabase Realtime does: tell the channel why, then close it.
            self.send(
                {
                    "event": "system",
                    "topic": topic,
                    "payload": {
                        "channel": topic.removeprefix("realtime:"),
                        "extension": "system",
                        "message": f"Invalid token: {error.message}",
                        "status": "error",
                    },
                    "ref": None,
                }
            )
            self._leave(topic)


def realtime_route(hub: RealtimeHub, jwt_secret: str, *, path: str = "/realtime/v1/websocket") -> WebSocketRoute:
    """The Supabase Realtime websocket endpoint; the ``apikey`` query parameter must be a valid API key."""
    authenticator = Authenticator(jwt_secret)

    async def endpoint(websocket: WebSocket) -> None:
        token = websocket.query_params.get("apikey")
        try:
            if not token:
                raise AuthenticationError("PGRST302", "No API key found in request", invalid_token=False)
            authenticator.identify(token)
        except AuthenticationError as error:
            logger.info("realtime connection refused", extra={"reason": error.message})
            # Closing before accepting refuses the websocket handshake (HTTP 403).
            await websocket.close(code=1008)
            return
        await websocket.accept()
        CONNECTED_CLIENTS.inc()
        try:
            await _Session(websocket=websocket, hub=hub, authenticator=authenticator).run()
        finally:
            CONNECTED_CLIENTS.dec()

    return WebSocketRoute(path, endpoint)
