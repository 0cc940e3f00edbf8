"""The rollups' stored energy deltas (migration 0015) stay those their neighbours give, whatever changes the buckets.

A bucket's delta depends on its previous and following stored buckets of the same meter and width, which can lie
in other 30-minute periods than the one a refresh recomputes. After every change below, each stored delta must
equal flux.interpolated_delta over the bucket and its neighbours as they are now (lag/lead over the whole table,
the way 0002 computed them at query time), to the bit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from telemetry_ingest.upkeep.rollups import RollupRefresher

pytestmark = pytest.mark.connected

BASE = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
COUNTERS = (
    "energy_imported_active",
    "energy_exported_active",
    "energy_imported_phase_a_active",
    "energy_exported_phase_a_active",
    "energy_imported_phase_b_active",
    "energy_exported_phase_b_active",
    "energy_imported_phase_c_active",
    "energy_exported_phase_c_active",
    "energy_imported_reactive",
    "energy_exported_reactive",
    "energy_imported_apparent",
    "energy_exported_apparent",
)
INSERT = (
    "INSERT INTO flux.mg_meter_readings (device_id, time, energy_imported_active, energy_exported_active,"
    " energy_imported_reactive) VALUES ($1, $2, $3, $4, $5)"
)
# Every bucket whose stored delta differs from the one its neighbours give now, for any of the twelve counters.
WRONG_DELTAS = (
    "SELECT bucket_minutes, time_b, counter, stored, expected FROM ("
    " SELECT rollups.bucket_minutes, rollups.time_b, counters.counter, counters.stored, counters.expected"
    " FROM (SELECT rollups.*,"
    + ", ".join(
        f"flux.interpolated_delta(rollups.{name}, rollups.time_b, make_interval(mins => rollups.bucket_minutes),"
        f" lag(rollups.{name}) OVER meter, lead(rollups.{name}) OVER meter) AS {name}_expected"
        for name in COUNTERS
    )
    + " FROM flux.meter_reading_rollups AS rollups WHERE rollups.device_id = $1"
    " WINDOW meter AS (PARTITION BY rollups.bucket_minutes ORDER BY rollups.time_b)) AS rollups"
    " CROSS JOIN LATERAL (VALUES "
    + ", ".join(f"('{name}', rollups.{name}_delta, rollups.{name}_expected)" for name in COUNTERS)
    + ") AS counters (counter, stored, expected)) AS compared WHERE stored IS DISTINCT FROM expected"
    " ORDER BY 1, 2, 3"
)


def reading(device: uuid.UUID, minute: float, *, reset_after: float | None = None) -> tuple[object, ...]:
    """A reading ``minute`` minutes after BASE; the exported counter restarts from 0 after ``reset_after``."""
    exported = 40.0 + 0.3 * minute
    if reset_after is not None and minute > reset_after:
        exported = 0.3 * (minute - reset_after)
    return (device, BASE + timedelta(minutes=minute), 100.0 + 0.5 * minute, exported, 7.0 + 0.125 * minute)


async def assert_deltas_consistent(pool: asyncpg.Pool, device: uuid.UUID) -> int:
    """Assert that every stored delta of the device is its neighbours' one; returns how many buckets it has."""
    wrong = [tuple(row) for row in await pool.fetch(WRONG_DELTAS, device)]
    assert wrong == []
    buckets: int = await pool.fetchval("SELECT count(*) FROM flux.meter_reading_rollups WHERE device_id = $1", device)
    return buckets


async def insert_deferred(pool: asyncpg.Pool, rows: list[tuple[object, ...]]) -> None:
    """Insert as bulk ingest does: markers only; the rollups wait for a refresher pass."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL gridloop.rollups = 'deferred'")
        await connection.executemany(INSERT, rows)


@pytest.fixture
async def device(pool: asyncpg.Pool) -> AsyncIterator[uuid.UUID]:
    meter = uuid.uuid4()
    yield meter
    await pool.execute("DELETE FROM flux.mg_meter_readings WHERE device_id = $1", meter)


async def test_deferred_batches_in_order_and_out_of_order_keep_every_delta(
    pool: asyncpg.Pool, device: uuid.UUID
) -> None:
    refresher = RollupRefresher(pool=pool)
    while await refresher.refresh_once():  # markers other tests of the session left: counted below otherwise
        pass
    # Two hours in one batch: adjacent periods of one meter refreshed in one statement.
    await insert_deferred(pool, [reading(device, minute) for minute in range(0, 120, 4)])
    assert await refresher.refresh_once() == 4
    assert await assert_deltas_consistent(pool, device) == 24 + 4
    # The next hour: the previous period's last bucket now has a following bucket.
    await insert_deferred(pool, [reading(device, minute) for minute in range(120, 180, 4)])
    assert await refresher.refresh_once() == 2
    await assert_deltas_consistent(pool, device)
    # After a gap of four hours, and then a late reading inside the gap: the buckets on both sides of the gap
    # (in periods no refresh touched since) change their following and previous bucket.
    await insert_deferred(pool, [reading(device, minute) for minute in range(420, 480, 4)])
    await refresher.refresh_once()
    await assert_deltas_consistent(pool, device)
    await insert_deferred(pool, [reading(device, 301.0)])
    assert await refresher.refresh_once() == 1
    await assert_deltas_consistent(pool, device)
    # A late reading before the first bucket, and one between two buckets of one period.
    await insert_deferred(pool, [reading(device, -95.0), reading(device, 62.5)])
    assert await refresher.refresh_once() == 2
    assert await assert_deltas_consistent(pool, device) > 40


async def test_deletes_updates_and_resets_refreshed_in_their_statement_keep_every_delta(
    pool: asyncpg.Pool, device: uuid.UUID
) -> None:
    await pool.executemany(INSERT, [reading(device, minute, reset_after=47.0) for minute in range(0, 150, 3)])
    await assert_deltas_consistent(pool, device)
    # Emptying a whole period: its buckets go, and the buckets around it get new neighbours.
    await pool.execute(
        "DELETE FROM flux.mg_meter_readings WHERE device_id = $1 AND time >= $2 AND time < $3",
        device,
        BASE + timedelta(minutes=60),
        BASE + timedelta(minutes=90),
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM flux.meter_reading_rollups WHERE device_id = $1 AND time_b >= $2 AND time_b < $3",
            device,
            BASE + timedelta(minutes=60),
            BASE + timedelta(minutes=90),
        )
        == 0
    )
    await assert_deltas_consistent(pool, device)
    # Emptying one 5-minute bucket at a period's edge.
    await pool.execute(
        "DELETE FROM flux.mg_meter_readings WHERE device_id = $1 AND time >= $2 AND time < $3",
        device,
        BASE + timedelta(minutes=25),
        BASE + timedelta(minutes=30),
    )
    await assert_deltas_consistent(pool, device)
    # A counter value changed, and a reading moved into the emptied period.
    await pool.execute(
        "UPDATE flux.mg_meter_readings SET energy_imported_active = energy_imported_active + 3"
        " WHERE device_id = $1 AND time = $2",
        device,
        BASE + timedelta(minutes=30),
    )
    await pool.execute(
        "UPDATE flux.mg_meter_readings SET time = $3 WHERE device_id = $1 AND time = $2",
        device,
        BASE + timedelta(minutes=93),
        BASE + timedelta(minutes=77),
    )
    assert await assert_deltas_consistent(pool, device) == 35 - 7 - 1 + 2


async def test_adjacent_periods_refreshed_by_two_transactions_at_once_keep_every_delta(
    pool: asyncpg.Pool, device: uuid.UUID
) -> None:
    """The second refresh of the meter waits for the first (one lock per meter), and then sees its buckets."""
    await insert_deferred(pool, [reading(device, minute) for minute in range(0, 60, 4)])
    await pool.execute("DELETE FROM ingest.meter_rollup_dirty WHERE device_id = $1", device)
    first_period, second_period = BASE, BASE + timedelta(minutes=30)
    refresh = "SELECT flux.refresh_meter_rollups(ARRAY[$1::uuid], ARRAY[$2::timestamptz], false)"
    async with pool.acquire() as first, pool.acquire() as second:
        first_transaction = first.transaction()
        await first_transaction.start()
        await first.execute(refresh, device, first_period)
        waiting_pid = second.get_server_pid()
        second_refresh = asyncio.create_task(second.execute(refresh, device, second_period))
        # Until the second backend waits on the first one's advisory lock (an event, polled on the server).
        await pool.execute(
            "DO $$ BEGIN"
            f" FOR attempt IN 1..3000 LOOP"
            f"  EXIT WHEN EXISTS (SELECT FROM pg_locks WHERE pid = {waiting_pid} AND locktype = 'advisory'"
            "   AND NOT granted);"
            "  PERFORM pg_sleep(0.01);"
            " END LOOP; END $$"
        )
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted", waiting_pid
            )
            == 1
        )
        assert not second_refresh.done()
        await first_transaction.commit()
        await second_refresh
    assert await assert_deltas_consistent(pool, device) == 12 + 2
