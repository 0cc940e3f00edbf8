"""Deferred rollups (bulk ingest) end up identical to the ones refreshed in the inserting statement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from telemetry_ingest.rollups import RollupRefresher

COLUMNS = (
    "bucket_minutes, time_b, reading_count, power_total_active_avg,"
    " energy_imported_active::text AS imported, energy_exported_active::text AS exported"
)


async def test_deferred_and_immediate_rollups_agree(database_url: str) -> None:
    async with open_pool(database_url, max_size=3) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        immediate, deferred = uuid.uuid4(), uuid.uuid4()
        start = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
        rows = [
            (start + timedelta(minutes=minute), 1.0 + minute % 7, 100.0 + minute * 0.4, 50.0 + minute * 0.1)
            for minute in range(0, 95, 2)
        ]
        insert = (
            "INSERT INTO flux.mg_meter_readings (device_id, time, power_total_active, energy_imported_active,"
            " energy_exported_active) VALUES ($1, $2, $3, $4, $5)"
        )
        await pool.executemany(insert, [(immediate, *row) for row in rows])
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SET LOCAL gridloop.rollups = 'deferred'")
            await connection.executemany(insert, [(deferred, *row) for row in rows])
        assert (
            await pool.fetchval("SELECT count(*) FROM flux.meter_reading_rollups WHERE device_id = $1", deferred) == 0
        )
        refreshed = await RollupRefresher(pool=pool).refresh_once()
        assert refreshed == 4  # four 30-minute periods touched
        query = f"SELECT {COLUMNS} FROM flux.meter_reading_rollups WHERE device_id = $1 ORDER BY bucket_minutes, time_b"
        expected = [dict(row) for row in await pool.fetch(query, immediate)]
        assert expected
        assert [dict(row) for row in await pool.fetch(query, deferred)] == expected
        assert await RollupRefresher(pool=pool).refresh_once() == 0
