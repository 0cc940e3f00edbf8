"""Inserted readings are announced only while a realtime subscriber watches their table (migration 0009)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from telemetry_ingest.realtime import NOTIFY_CHANNEL, Binding, RealtimeHub, RowChange

pytestmark = pytest.mark.connected


@pytest.fixture
async def notifications(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Every change notification on the session database, parsed; starts with no interest registered."""
    await pool.execute("DELETE FROM ingest.realtime_interest")
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(NOTIFY_CHANNEL, lambda *arguments: received.put_nowait(json.loads(arguments[-1])))
    try:
        yield received
    finally:
        await listener.close()


async def _insert(pool: asyncpg.Pool | asyncpg.Connection, table: str, device: uuid.UUID) -> None:
    columns = "soe, target_power" if table == "mg_bess_readings" else "frequency, power_total_active"
    await pool.execute(
        f"INSERT INTO flux.{table} (time, device_id, {columns}) VALUES ($1, $2, 50, 1)", datetime.now(tz=UTC), device
    )


async def _watch(pool: asyncpg.Pool, table: str, *, expires_in_s: float) -> None:
    await pool.execute(
        "INSERT INTO ingest.realtime_interest (replica, schema_name, table_name, expires_at)"
        " VALUES ($1, 'flux', $2, clock_timestamp() + make_interval(secs => $3))",
        uuid.uuid4(),
        table,
        expires_in_s,
    )


async def _next_device(notifications: asyncio.Queue[dict[str, Any]]) -> tuple[str, str]:
    message = await asyncio.wait_for(notifications.get(), timeout=10)
    (record,) = message["records"]
    return message["table"], record["device_id"]


async def test_inserts_are_announced_only_while_their_table_is_watched(
    pool: asyncpg.Pool, notifications: asyncio.Queue[dict[str, Any]]
) -> None:
    unwatched, watched, expired, bess_unwatched, watched_again = (uuid.uuid4() for _ in range(5))
    await _insert(pool, "mg_meter_readings", unwatched)
    await _watch(pool, "mg_meter_readings", expires_in_s=60)
    await _insert(pool, "mg_bess_readings", bess_unwatched)  # only the meter table is watched
    await _insert(pool, "mg_meter_readings", watched)
    # Notifications arrive in commit order: had the first two been announced, they would come first.
    assert await _next_device(notifications) == ("mg_meter_readings", str(watched))

    await pool.execute("UPDATE ingest.realtime_interest SET expires_at = clock_timestamp() - interval '1 second'")
    await _insert(pool, "mg_meter_readings", expired)
    await _watch(pool, "mg_meter_readings", expires_in_s=60)
    await _insert(pool, "mg_meter_readings", watched_again)
    assert await _next_device(notifications) == ("mg_meter_readings", str(watched_again))
    assert notifications.empty()


async def test_a_rest_role_insert_is_announced_through_the_definer_function(
    pool: asyncpg.Pool, notifications: asyncio.Queue[dict[str, Any]]
) -> None:
    # The API inserts as the JWT's role, which may not read the ingest schema; the trigger still works.
    device = uuid.uuid4()
    await _watch(pool, "mg_meter_readings", expires_in_s=60)
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL ROLE authenticated")
        await _insert(connection, "mg_meter_readings", device)
    assert await _next_device(notifications) == ("mg_meter_readings", str(device))


class _Subscriber:
    def __init__(self, bindings: Sequence[Binding]) -> None:
        self.bindings = bindings

    def deliver(self, change: RowChange, binding_ids: list[int], columns: list[dict[str, str]]) -> None:
        pass


def _binding(table: str | None) -> Binding:
    return Binding(
        id=1, event="INSERT", schema="flux", table=table, requested_table=table, filter_text=None, change_filter=None
    )


async def _eventually(check: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_the_hub_registers_renews_and_drops_its_interest(pool: asyncpg.Pool, database_url: str) -> None:
    await pool.execute("DELETE FROM ingest.realtime_interest")

    async def watched() -> set[str]:
        rows = await pool.fetch("SELECT table_name FROM ingest.realtime_interest WHERE expires_at > clock_timestamp()")
        return {row["table_name"] for row in rows}

    async with RealtimeHub(database_url, interest_ttl_s=0.6) as hub:
        assert await watched() == set()
        meter = _Subscriber([_binding("mg_meter_readings")])
        await hub.subscribe(meter)
        # Registered before subscribe returns, i.e. before the client hears its join succeeded.
        assert await watched() == {"mg_meter_readings"}
        everything = _Subscriber([_binding(None)])
        await hub.subscribe(everything)
        assert await watched() == {"mg_meter_readings", "mg_bess_readings", "mg_ev_charger_readings"}
        first_expiry = await pool.fetchval("SELECT max(expires_at) FROM ingest.realtime_interest")

        async def renewed() -> bool:
            latest = await pool.fetchval("SELECT min(expires_at) FROM ingest.realtime_interest")
            return bool(latest > first_expiry)

        await _eventually(renewed, what="the keeper renewing the registrations")
        hub.unsubscribe(everything)

        async def only_meter() -> bool:
            return await watched() == {"mg_meter_readings"}

        await _eventually(only_meter, what="the other registrations dropped once nobody watches them")
    assert await pool.fetchval("SELECT count(*) FROM ingest.realtime_interest") == 0
