"""Partition upkeep: next months get their partitions, and running it again creates nothing."""

from __future__ import annotations

import uuid

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from telemetry_ingest.upkeep.partitions import PartitionKeeper


async def test_partitions_are_created_ahead_and_upkeep_is_idempotent(database_url: str) -> None:
    async with open_pool(database_url, max_size=2) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        keeper = PartitionKeeper(pool=pool, months_ahead=24)
        first = await keeper.ensure()
        second = await keeper.ensure()
        next_year = await pool.fetchval(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'flux.mg_meter_readings'::regclass"
            " AND c.relname LIKE '%' || to_char(now() + interval '18 months', 'YYYY_MM') || '%'"
        )
    assert first > 0  # the migration made 12 months ahead; 24 needs more
    assert second == 0
    assert next_year == 1


async def test_a_partition_that_changed_a_lot_since_its_last_analyze_is_analyzed_once(database_url: str) -> None:
    async with open_pool(database_url, max_size=2) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        keeper = PartitionKeeper(pool=pool, months_ahead=24)
        await keeper.ensure()
        # A month of its own, far ahead, in the battery table (no rollups): 2,000 rows in a partition that has
        # never been analyzed, as a new month's partition is when readings start to land in it.
        month = await pool.fetchval("SELECT date_trunc('month', now() + interval '20 months')")
        device = uuid.uuid4()
        async with pool.acquire() as connection:
            await connection.execute(
                "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power)"
                " SELECT $1::timestamptz + make_interval(secs => step * 5), $2, 50, 0"
                " FROM generate_series(1, 2000) AS step",
                month,
                device,
            )
            # Statistics reach the shared counters when the backend flushes them: now, not within a second.
            await connection.execute("SELECT pg_stat_force_next_flush()")
            await connection.execute("SELECT 1")
        partition = await pool.fetchval(
            "SELECT DISTINCT 'flux.' || quote_ident(relname) FROM flux.mg_bess_readings"
            " JOIN pg_class ON pg_class.oid = mg_bess_readings.tableoid WHERE device_id = $1",
            device,
        )
        try:
            before = await pool.fetchval(
                "SELECT last_analyze FROM pg_stat_all_tables WHERE relid = $1::regclass", partition
            )
            first = await keeper.analyze_changed()
            after = await pool.fetchval(
                "SELECT last_analyze FROM pg_stat_all_tables WHERE relid = $1::regclass", partition
            )
            statistics = await pool.fetchval(
                "SELECT count(*) FROM pg_stats WHERE schemaname || '.' || tablename = $1", partition
            )
            second = await keeper.analyze_changed()
        finally:
            await pool.execute("DELETE FROM flux.mg_bess_readings WHERE device_id = $1", device)
    assert before is None
    assert partition in first
    assert after is not None
    assert statistics > 0
    assert partition not in second
