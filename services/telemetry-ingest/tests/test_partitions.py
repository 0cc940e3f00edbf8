"""Partition upkeep: next months get their partitions, and running it again creates nothing."""

from __future__ import annotations

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from telemetry_ingest.partitions import PartitionKeeper


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
