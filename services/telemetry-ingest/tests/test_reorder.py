"""Closed days of readings rewritten in (device_id, time) order (migration 0012, upkeep/reorder.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gridloop_common.testing import FakeClock
from telemetry_ingest.ingest.repository import ReadingKind, ReadingsRepository, table_columns
from telemetry_ingest.realtime import NOTIFY_CHANNEL
from telemetry_ingest.upkeep.reorder import DayReorderer
from telemetry_ingest.upkeep.rollups import RollupRefresher

pytestmark = pytest.mark.connected

_MEASURES = len(table_columns(ReadingKind.METER)) - 2


async def _store_interleaved_day(pool: asyncpg.Pool, day: date, devices: list[uuid.UUID]) -> None:
    """Readings of ``devices`` every 10 minutes across ``day``, stored cycle by cycle as ingest stores them."""
    repository = ReadingsRepository(pool)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    for cycle in range(144):
        moment = start + timedelta(minutes=10 * cycle)
        records = [(moment, device, *([float(cycle + index)] * _MEASURES)) for index, device in enumerate(devices)]
        await repository.insert_records(ReadingKind.METER, records)


async def _physical_order(pool: asyncpg.Pool, devices: list[uuid.UUID], day: date) -> list[tuple[uuid.UUID, datetime]]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rows = await pool.fetch(
        "SELECT device_id, time FROM flux.mg_meter_readings"
        " WHERE device_id = ANY($1) AND time >= $2 AND time < $3 ORDER BY ctid",
        devices,
        start,
        start + timedelta(days=1),
    )
    return [(row["device_id"], row["time"]) for row in rows]


async def _snapshot(pool: asyncpg.Pool, devices: list[uuid.UUID]) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT * FROM flux.mg_meter_readings WHERE device_id = ANY($1) ORDER BY device_id, time", devices
    )
    return [dict(row) for row in rows]


@pytest.fixture
async def notifications(database_url: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(NOTIFY_CHANNEL, lambda *arguments: received.put_nowait(json.loads(arguments[-1])))
    try:
        yield received
    finally:
        await listener.close()


async def test_a_closed_day_is_rewritten_in_device_order_with_every_column_kept(pool: asyncpg.Pool) -> None:
    devices = sorted(uuid.uuid4() for _ in range(3))
    day, next_day = date(2026, 5, 10), date(2026, 5, 11)
    await _store_interleaved_day(pool, day, devices)
    await _store_interleaved_day(pool, next_day, devices)
    before = await _snapshot(pool, devices)
    next_day_layout = await pool.fetch(
        "SELECT ctid::text FROM flux.mg_meter_readings WHERE device_id = ANY($1) AND time >= $2 ORDER BY ctid",
        devices,
        datetime(2026, 5, 11, tzinfo=UTC),
    )
    stored_order = await _physical_order(pool, devices, day)
    assert stored_order != sorted(stored_order)  # interleaved as ingested: the test can tell the difference

    moved, partition = await DayReorderer(pool=pool).reorder_day("mg_meter_readings", day)

    in_day = await pool.fetchval(
        "SELECT count(*) FROM flux.mg_meter_readings WHERE time >= $1 AND time < $1 + interval '1 day'",
        datetime(2026, 5, 10, tzinfo=UTC),
    )
    assert moved == in_day >= 3 * 144
    assert partition == await pool.fetchval(
        "SELECT DISTINCT tableoid::regclass::text FROM flux.mg_meter_readings WHERE time >= $1 AND time < $2",
        datetime(2026, 5, 10, tzinfo=UTC),
        datetime(2026, 5, 11, tzinfo=UTC),
    )
    assert await _physical_order(pool, devices, day) == sorted(stored_order)
    assert await _snapshot(pool, devices) == before  # ids, created_at and every value kept
    # The next day was not touched: same tuples in the same places.
    assert (
        await pool.fetch(
            "SELECT ctid::text FROM flux.mg_meter_readings WHERE device_id = ANY($1) AND time >= $2 ORDER BY ctid",
            devices,
            datetime(2026, 5, 11, tzinfo=UTC),
        )
        == next_day_layout
    )
    # Done once: a second call (another replica) moves nothing.
    assert await DayReorderer(pool=pool).reorder_day("mg_meter_readings", day) == (None, partition)
    assert (
        await pool.fetchval(
            "SELECT row_count FROM ingest.reordered_days WHERE table_name = 'mg_meter_readings' AND day = $1", day
        )
        == moved
    )


async def test_moving_rows_recomputes_no_rollup_and_announces_nothing(
    pool: asyncpg.Pool, notifications: asyncio.Queue[dict[str, Any]]
) -> None:
    devices = sorted(uuid.uuid4() for _ in range(2))
    day = date(2026, 5, 12)
    await _store_interleaved_day(pool, day, devices)
    await RollupRefresher(pool=pool).refresh_once()
    rollups_before = await pool.fetch(
        "SELECT * FROM flux.meter_reading_rollups WHERE device_id = ANY($1) ORDER BY 1, 2, 3", devices
    )
    assert len(rollups_before) == 2 * (144 + 48)  # per device: a 5-minute bucket per reading, 48 periods
    await pool.execute(
        "INSERT INTO ingest.realtime_interest (replica, schema_name, table_name, expires_at)"
        " VALUES ($1, 'flux', 'mg_meter_readings', clock_timestamp() + interval '5 minutes')",
        uuid.uuid4(),
    )
    try:
        moved, _ = await DayReorderer(pool=pool).reorder_day("mg_meter_readings", day)
        assert moved is not None and moved >= 2 * 144
        # A real insert after the move: its announcement is the first one (notifications arrive in commit order).
        marker = uuid.uuid4()
        await pool.execute(
            "INSERT INTO flux.mg_meter_readings (time, device_id, frequency) VALUES (now(), $1, 50)", marker
        )
        message = await asyncio.wait_for(notifications.get(), timeout=10)
        assert [record["device_id"] for record in message["records"]] == [str(marker)]
    finally:
        await pool.execute("DELETE FROM ingest.realtime_interest")
    assert await pool.fetchval("SELECT count(*) FROM ingest.meter_rollup_dirty WHERE device_id = ANY($1)", devices) == 0
    assert (
        await pool.fetch("SELECT * FROM flux.meter_reading_rollups WHERE device_id = ANY($1) ORDER BY 1, 2, 3", devices)
        == rollups_before
    )


async def test_only_closed_days_with_readings_are_pending(pool: asyncpg.Pool) -> None:
    devices = [uuid.uuid4()]
    day = date(2026, 6, 3)
    await _store_interleaved_day(pool, day, devices)
    end_of_day = datetime(2026, 6, 4, tzinfo=UTC)

    not_yet = DayReorderer(pool=pool, after_s=3600, clock=FakeClock(end_of_day + timedelta(minutes=59)))
    assert not_yet.last_closed_day() == date(2026, 6, 2)
    assert day not in await not_yet.pending_days("mg_meter_readings")

    closed = DayReorderer(pool=pool, after_s=3600, clock=FakeClock(end_of_day + timedelta(minutes=61)))
    pending = await closed.pending_days("mg_meter_readings")
    assert day in pending
    assert date(2026, 6, 2) not in pending  # no readings that day (the session database has none then)
    assert day not in await closed.pending_days("mg_bess_readings")

    await closed.reorder_day("mg_meter_readings", day)
    assert day not in await closed.pending_days("mg_meter_readings")
    with pytest.raises(ValueError, match="not a readings table"):
        await closed.pending_days("market_data")


async def test_a_pass_reorders_every_pending_day_of_both_tables_and_vacuums(pool: asyncpg.Pool) -> None:
    device = uuid.uuid4()
    day = date(2026, 6, 20)
    start = datetime(2026, 6, 20, tzinfo=UTC)
    await ReadingsRepository(pool).insert_records(
        ReadingKind.BESS, [(start + timedelta(hours=hour), device, 50.0, 1.0, None, None) for hour in range(24)]
    )
    reorderer = DayReorderer(pool=pool, after_s=0, clock=FakeClock(datetime(2026, 6, 21, 0, 1, tzinfo=UTC)))

    moved = await reorderer.reorder_once()

    assert moved >= 24
    assert await reorderer.pending_days("mg_bess_readings") == []
    assert await reorderer.pending_days("mg_meter_readings") == []
    assert (
        await pool.fetchval(
            "SELECT row_count FROM ingest.reordered_days WHERE table_name = 'mg_bess_readings' AND day = $1", day
        )
        >= 24
    )
    partition = await pool.fetchval(
        "SELECT DISTINCT tableoid::regclass::text FROM flux.mg_bess_readings WHERE device_id = $1", device
    )
    last_vacuum = await pool.fetchval(
        "SELECT last_vacuum FROM pg_stat_user_tables WHERE relid = $1::text::regclass", partition
    )
    assert last_vacuum is not None


async def test_the_function_refuses_other_tables(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.InvalidParameterValueError, match="not a readings table"):
        await pool.fetchval("SELECT ingest.reorder_readings_day('market_data', DATE '2026-06-01')")
