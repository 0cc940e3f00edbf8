"""The change feed: LISTEN on one connection, and fan-out of each inserted row to the bindings it matches."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Protocol, Self

import asyncpg

from telemetry_ingest.realtime.filters import ChangeFilter, coerce

__all__ = [
    "INTEREST_TTL_S",
    "NOTIFY_CHANNEL",
    "PUBLISHED_TABLES",
    "Binding",
    "RealtimeHub",
    "RealtimeUnavailable",
    "RowChange",
    "Subscriber",
]

logger = logging.getLogger("telemetry_ingest.realtime")

NOTIFY_CHANNEL: Final = "flux_changes"  # the channel migration 0004's trigger notifies on
PUBLISHED_TABLES: Final = (
    ("flux", "mg_bess_readings"),
    ("flux", "mg_meter_readings"),
    ("flux", "mg_ev_charger_readings"),
)
# How long a replica's registered interest in a table lasts unless refreshed (migration 0009); the hub
# refreshes at a third of it, so one missed refresh never lets a live subscription lapse.
INTEREST_TTL_S: Final = 60.0
# Bindings checked (or deliveries made) between two yields to the event loop while one row is fanned out:
# the loop also serves the REST API and the readings consumer, and no client's bindings may stall it.
FAN_OUT_SLICE: Final = 2_000
# What a lost or refused database connection raises; the hub logs these and retries, anything else is a bug.
_DATABASE_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class RealtimeUnavailable(RuntimeError):
    """The hub cannot serve a new subscription now (its database connection is down)."""


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
    columns: tuple[str, ...] | None = None  # ``select``: the record holds these and the row's key only

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


_Entry = tuple[Subscriber, Binding]
_EntryKey = tuple[int, int]  # id() of the subscriber, binding id


@dataclass
class _TableIndex:
    """A table's bindings, placed so that a row is checked only against those it may match."""

    everything: dict[_EntryKey, _Entry] = field(default_factory=dict)  # no filter: every row
    # A filter with ``column=eq.X`` (or ``in``): found by the row's value of that column.
    pinned: dict[str, dict[Any, dict[_EntryKey, _Entry]]] = field(default_factory=dict)
    # Other filters: each distinct filter is checked once per row (clients often share one, as realtime-js's
    # identical bindings are collapsed by Supabase Realtime too).
    scanned: dict[ChangeFilter, dict[_EntryKey, _Entry]] = field(default_factory=dict)

    def add(self, subscriber: Subscriber, binding: Binding) -> None:
        key = (id(subscriber), binding.id)
        index_key = binding.change_filter.index_key() if binding.change_filter is not None else None
        if binding.change_filter is None:
            self.everything[key] = (subscriber, binding)
        elif index_key is None:
            self.scanned.setdefault(binding.change_filter, {})[key] = (subscriber, binding)
        else:
            column, values = index_key
            by_value = self.pinned.setdefault(column, {})
            for value in values:
                by_value.setdefault(value, {})[key] = (subscriber, binding)

    def remove(self, subscriber: Subscriber, binding: Binding) -> None:
        key = (id(subscriber), binding.id)
        index_key = binding.change_filter.index_key() if binding.change_filter is not None else None
        self.everything.pop(key, None)
        if binding.change_filter is not None and index_key is None:
            sharing = self.scanned.get(binding.change_filter)
            if sharing is not None:
                sharing.pop(key, None)
                if not sharing:
                    del self.scanned[binding.change_filter]
        if index_key is not None:
            column, values = index_key
            by_value = self.pinned.get(column, {})
            for value in values:
                entries = by_value.get(value)
                if entries is not None:
                    entries.pop(key, None)
                    if not entries:
                        del by_value[value]
            if not by_value:
                self.pinned.pop(column, None)


class RealtimeHub:
    """LISTENs on one dedicated connection and fans each inserted row out to the matching subscribers.

    Use as an async context manager. When the LISTEN connection is lost it reconnects with backoff;
    changes committed meanwhile are not replayed (as with Supabase Realtime), which is logged.

    The database announces a table's inserts only while some replica has registered interest in it
    (``ingest.realtime_interest``, migration 0009): ``subscribe`` registers the tables a subscriber's
    bindings cover before it returns, a background task keeps the registrations of watched tables alive
    and drops the rest, and closing the hub removes them.

    Bindings are indexed by table, and by value where their filter has an ``eq``/``in`` condition, so a row
    costs the bindings it may match rather than every binding. One task fans rows out in commit order and
    yields to the event loop every ``FAN_OUT_SLICE`` bindings, so a large number of filters slows delivery,
    never the REST API or ingest sharing the loop.
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
        self._subscribers: dict[Subscriber, tuple[Binding, ...]] = {}
        self._indexes: dict[tuple[str, str], _TableIndex] = {table: _TableIndex() for table in self._tables}
        self._columns: dict[tuple[str, str], dict[str, str]] = {}
        self._keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._binding_ids = itertools.count(1)
        self._replica = uuid.uuid4()
        self._interest_ttl_s = interest_ttl_s
        # Tables this replica has registered and the monotonic time by which the registration must be renewed.
        self._registered: dict[tuple[str, str], float] = {}
        self._statements = asyncio.Lock()  # one query at a time on the LISTEN connection
        self._keeper: asyncio.Task[None] | None = None
        self._changes: asyncio.Queue[tuple[RowChange, ...]] = asyncio.Queue()
        self._fan_out: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._connect()
        self._supervisor = asyncio.create_task(self._reconnect_forever(), name="realtime-listen")
        self._keeper = asyncio.create_task(self._keep_interest_forever(), name="realtime-interest")
        self._fan_out = asyncio.create_task(self._fan_out_forever(), name="realtime-fan-out")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in (self._fan_out, self._keeper, self._supervisor):
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

    def row_key(self, schema: str, table: str) -> tuple[str, ...]:
        """The columns that identify a row: the primary key, else the first unique constraint's."""
        return self._keys.get((schema, table), ())

    def next_binding_id(self) -> int:
        return next(self._binding_ids)

    async def subscribe(self, subscriber: Subscriber) -> None:
        """Start fanning changes out to ``subscriber``, once the database announces every table it watches.

        Raises ``RealtimeUnavailable`` when the interest cannot be registered (database unreachable).
        """
        self._add(subscriber)
        loop = asyncio.get_running_loop()
        missing = [table for table in self._tables_of(subscriber) if self._registered.get(table, 0.0) <= loop.time()]
        if not missing:
            return
        try:
            await self._register(missing)
        except _DATABASE_ERRORS as error:
            self.unsubscribe(subscriber)
            raise RealtimeUnavailable(f"realtime is unavailable: {error}") from error

    def unsubscribe(self, subscriber: Subscriber) -> None:
        # The registration lapses on the keeper's next round, not here: a client that rejoins at once
        # (token refresh, reconnect) keeps its change feed without a gap.
        bindings = self._subscribers.pop(subscriber, None)
        if bindings is None:
            return
        for binding in bindings:
            for table in self._binding_tables(binding):
                self._indexes[table].remove(subscriber, binding)

    def _add(self, subscriber: Subscriber) -> None:
        bindings = tuple(subscriber.bindings)
        self._subscribers[subscriber] = bindings
        for binding in bindings:
            for table in self._binding_tables(binding):
                self._indexes[table].add(subscriber, binding)

    def _binding_tables(self, binding: Binding) -> list[tuple[str, str]]:
        return [
            (schema, table)
            for schema, table in self._tables
            if schema == binding.schema and binding.table in (None, table)
        ]

    def _tables_of(self, subscriber: Subscriber) -> set[tuple[str, str]]:
        return {table for binding in subscriber.bindings for table in self._binding_tables(binding)}

    def _watched_tables(self) -> set[tuple[str, str]]:
        return {table for table, index in self._indexes.items() if index.everything or index.pinned or index.scanned}

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
        schemas = [schema for schema, _ in self._tables]
        names = [table for _, table in self._tables]
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
                schemas,
                names,
            )
            key_rows = await connection.fetch(
                """
                SELECT DISTINCT ON (namespace.nspname, class.relname)
                       namespace.nspname AS schema, class.relname AS table,
                       array(SELECT attribute.attname
                             FROM unnest(index.indkey) WITH ORDINALITY AS key (number, position)
                             JOIN pg_attribute AS attribute
                               ON attribute.attrelid = class.oid AND attribute.attnum = key.number
                             ORDER BY key.position) AS columns
                FROM pg_index AS index
                JOIN pg_class AS class ON class.oid = index.indrelid
                JOIN pg_namespace AS namespace ON namespace.oid = class.relnamespace
                WHERE (namespace.nspname, class.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                  AND index.indisunique AND index.indpred IS NULL AND 0 <> ALL (index.indkey)
                ORDER BY namespace.nspname, class.relname, index.indisprimary DESC, index.indexrelid
                """,
                schemas,
                names,
            )
            columns: dict[tuple[str, str], dict[str, str]] = {}
            for row in rows:
                columns.setdefault((row["schema"], row["table"]), {})[row["column"]] = row["type"]
            await connection.add_listener(self._channel, self._on_notification)
        except BaseException:
            await connection.close()
            raise
        self._columns = columns
        self._keys = {(row["schema"], row["table"]): tuple(row["columns"]) for row in key_rows}
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
            changes = tuple(RowChange(schema, table, commit_timestamp, record) for record in records)
        except (ValueError, KeyError, TypeError) as error:
            logger.error("malformed change notification", extra={"error": repr(error)})
            return
        # Matching happens in the fan-out task, which yields between slices: never in this callback.
        self._changes.put_nowait(changes)

    async def _fan_out_forever(self) -> None:
        while True:
            changes = await self._changes.get()
            for change in changes:
                await self._fan_out_one(change)

    async def _fan_out_one(self, change: RowChange) -> None:
        index = self._indexes.get((change.schema, change.table))
        if index is None:
            return
        column_types = self._columns.get((change.schema, change.table), {})
        columns = [{"name": name, "type": type_name} for name, type_name in column_types.items()]
        matched: dict[Subscriber, list[int]] = {}
        coerced: dict[str, Any] = {}  # the row's values converted once, not once per binding
        work = 0

        def take(entries: Iterable[_Entry], change_filter: ChangeFilter | None) -> None:
            # A scanned entry's filter was checked once for all who share it; a pinned one checks the rest of its own.
            for subscriber, binding in entries:
                own = binding.change_filter
                if change_filter is not None or own is None or own.matches(change.record, coerced):
                    matched.setdefault(subscriber, []).append(binding.id)

        everything = list(index.everything.values())
        take(everything, None)
        work += len(everything)
        for column, by_value in index.pinned.items():
            try:
                value = coerce(column_types.get(column, "text"), change.record.get(column))
                pinned = by_value.get(value) if value is not None else None
            except (TypeError, ValueError):
                pinned = None
            if pinned:
                entries = list(pinned.values())
                take(entries, None)
                work += len(entries)
            if work >= FAN_OUT_SLICE:
                work = 0
                await asyncio.sleep(0)
        for change_filter, sharing in list(index.scanned.items()):
            work += 1
            if change_filter.matches(change.record, coerced):
                entries = list(sharing.values())
                take(entries, change_filter)
                work += len(entries)
            if work >= FAN_OUT_SLICE:
                work = 0
                await asyncio.sleep(0)
        for delivered, (subscriber, binding_ids) in enumerate(matched.items(), start=1):
            # A subscriber that left while this row was being matched gets nothing.
            if subscriber in self._subscribers:
                subscriber.deliver(change, binding_ids, columns)
            if delivered % FAN_OUT_SLICE == 0:
                await asyncio.sleep(0)
