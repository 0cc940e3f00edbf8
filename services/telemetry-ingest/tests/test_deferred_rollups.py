"""Deferred rollups (bulk ingest) end up identical to the ones refreshed in the inserting statement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from telemetry_ingest.upkeep.rollups import RollupRefresher

COLUMNS = (
    "bucket_minutes, time_b, reading_count, power_total_active_avg,"
    " energy_imported_active::text AS imported, energy_exported_active::text AS exported"
)


async def test_deferred_and_immediate_rollups_agree(database_url: str) -> None:
    async with open_pool(database_url, max_size=3) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        # The session's database is shared: a service run by an earlier test may have left periods marked.
        await RollupRefresher(pool=pool).refresh_once()
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


async def test_a_period_is_refreshed_only_once_settled_and_new_readings_do_not_postpone_it(database_url: str) -> None:
    async with open_pool(database_url, max_size=3) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        device = uuid.uuid4()
        period = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
        insert = "INSERT INTO flux.mg_meter_readings (device_id, time, power_total_active) VALUES ($1, $2, $3)"

        async def insert_deferred(moment: datetime, power_kw: float) -> None:
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SET LOCAL gridloop.rollups = 'deferred'")
                await connection.execute(insert, device, moment, power_kw)

        async def thirty_minute_count() -> int | None:
            value = await pool.fetchval(
                "SELECT reading_count FROM flux.meter_reading_rollups"
                " WHERE bucket_minutes = 30 AND device_id = $1 AND time_b = $2",
                device,
                period,
            )
            return None if value is None else int(value)

        settled = RollupRefresher(pool=pool, settle_s=3600)
        await insert_deferred(period + timedelta(minutes=1), 1.0)
        assert await settled.refresh_once() == 0  # every marker in this fresh database is younger than an hour
        assert await thirty_minute_count() is None
        await pool.execute(
            "UPDATE ingest.meter_rollup_dirty SET first_marked_at = first_marked_at - interval '2 hours'"
            " WHERE device_id = $1",
            device,
        )
        await insert_deferred(period + timedelta(minutes=2), 2.0)  # marks the same period again
        assert await settled.refresh_once() == 1  # still as old as its first mark
        assert await thirty_minute_count() == 2


async def test_the_markers_table_is_vacuumed_once_its_dead_rows_pass_the_threshold(database_url: str) -> None:
    async with open_pool(database_url, max_size=2) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        refresher = RollupRefresher(pool=pool)
        device = uuid.uuid4()
        async with pool.acquire() as connection:
            # 3,000 markers set and taken again, as ingest and the refresher do: 3,000 dead rows.
            await connection.execute(
                "INSERT INTO ingest.meter_rollup_dirty (device_id, period_start)"
                " SELECT $1, TIMESTAMPTZ '2026-01-01 00:00Z' + make_interval(mins => 30 * step)"
                " FROM generate_series(1, 3000) AS step",
                device,
            )
            await connection.execute("DELETE FROM ingest.meter_rollup_dirty WHERE device_id = $1", device)
            # Statistics reach the shared counters when the backend flushes them: now, not within a second.
            await connection.execute("SELECT pg_stat_force_next_flush()")
            await connection.execute("SELECT 1")

        async def dead_and_vacuumed() -> tuple[int, object]:
            row = await pool.fetchrow(
                "SELECT n_dead_tup, last_vacuum FROM pg_stat_all_tables"
                " WHERE relid = 'ingest.meter_rollup_dirty'::regclass"
            )
            assert row is not None
            return int(row["n_dead_tup"]), row["last_vacuum"]

        dead_before, vacuumed_before = await dead_and_vacuumed()
        first = await refresher.vacuum_if_bloated()
        dead_after, vacuumed_after = await dead_and_vacuumed()
        second = await refresher.vacuum_if_bloated()
    assert dead_before >= 3000
    assert first is True
    assert dead_after < 50
    assert vacuumed_after is not None and vacuumed_after != vacuumed_before
    assert second is False


async def _refresh_with_plans_logged(
    connection: asyncpg.Connection, *, max_pairs: int, min_age: str
) -> tuple[int, list[str]]:
    """One refresh pass; auto_explain logs the plan of every statement, the functions' own included, to us."""
    messages: list[str] = []
    connection.add_log_listener(lambda _connection, message: messages.append(str(message)))
    await connection.execute("LOAD 'auto_explain'")
    await connection.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET client_min_messages = log"
    )
    taken = await connection.fetchval(
        "SELECT flux.refresh_dirty_meter_rollups($1, $2::text::interval)", max_pairs, min_age
    )
    await connection.execute("RESET client_min_messages")
    return int(taken), messages


async def test_markers_are_taken_by_ctid_whatever_the_statistics_say(database_url: str) -> None:
    # A VACUUM of a drained markers' table that keeps its last page leaves statistics of about one row in all its
    # pages. The planner then expected one marker, joined the take's two sides with a nested loop that re-ran the
    # locking subquery for every marker, and 5,000 of 30,000 markers took 104 s (migration 0013).
    async with open_pool(database_url, max_size=2) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
    device = uuid.uuid4()
    mark = (
        "INSERT INTO ingest.meter_rollup_dirty (device_id, period_start, first_marked_at)"
        " SELECT $1, TIMESTAMPTZ '2026-01-01 00:00Z' + make_interval(mins => 30 * step), TIMESTAMPTZ '2026-01-01Z'"
        " FROM generate_series($2::integer, $3::integer) AS step"
    )
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(mark, device, 1, 3000)
        # All but the last marker taken: the last page stays, so VACUUM cannot truncate the table.
        await connection.execute(
            "DELETE FROM ingest.meter_rollup_dirty WHERE period_start < (SELECT max(period_start) FROM"
            " ingest.meter_rollup_dirty)"
        )
        await connection.execute("VACUUM ingest.meter_rollup_dirty")
        statistics = await connection.fetchrow(
            "SELECT reltuples, relpages FROM pg_class WHERE oid = 'ingest.meter_rollup_dirty'::regclass"
        )
        await connection.execute(mark, device, 3001, 5000)
        taken, messages = await _refresh_with_plans_logged(connection, max_pairs=500, min_age="0 seconds")
        left = await connection.fetchval("SELECT count(*) FROM ingest.meter_rollup_dirty")
    finally:
        await connection.close()
    # The statistics that misled the planner: one marker in many pages.
    assert statistics["reltuples"] == 1
    assert statistics["relpages"] > 10
    take = [message for message in messages if "DELETE FROM ingest.meter_rollup_dirty" in message]
    assert len(take) == 1
    # Each marker found by its ctid: no subquery run again per marker, no whole-table filter against the ctids.
    assert "Tid Scan on meter_rollup_dirty" in take[0]
    assert "Nested Loop" not in take[0]
    assert "Filter: (ctid = ANY" not in take[0]
    assert taken == 500
    assert left == 2001 - 500


async def test_an_idle_refresh_pass_is_not_jit_compiled(database_url: str) -> None:
    # enable_seqscan = off inflates the take's estimated cost past every JIT threshold: before migration 0014 each
    # pass, once a second and with no marker to take, spent 50-100 ms compiling the statement with LLVM.
    async with open_pool(database_url, max_size=1) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT pg_jit_available()")  # JIT is there to be avoided
        await connection.execute("SET jit = on; SET jit_above_cost = 0")
        # No marker is a century old: the pass takes nothing, as an idle one does.
        taken, messages = await _refresh_with_plans_logged(connection, max_pairs=5000, min_age="100 years")
    finally:
        await connection.close()
    assert taken == 0
    take = [message for message in messages if "DELETE FROM ingest.meter_rollup_dirty" in message]
    outer = [message for message in messages if "Query Text: SELECT flux.refresh_dirty_meter_rollups" in message]
    assert len(take) == 1 and len(outer) == 1
    assert "JIT:" in outer[0]  # the session compiles everything it may ...
    assert "JIT:" not in take[0]  # ... but not the take


async def test_the_markers_are_vacuumed_while_every_refresh_pass_fails(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A refresh that keeps failing (here: the readings locked away, so each pass hits the command timeout) must not
    # postpone the markers' upkeep: the vacuum check runs every few passes, failed or not.
    async with (
        open_pool(database_url, max_size=2, command_timeout_s=0.3) as pool,
        open_pool(database_url, max_size=1) as locker,
    ):
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        device = uuid.uuid4()
        await pool.execute(
            "INSERT INTO ingest.meter_rollup_dirty (device_id, period_start)"
            " SELECT $1, TIMESTAMPTZ '2026-02-01 00:00Z' + make_interval(mins => 30 * step)"
            " FROM generate_series(1, 3000) AS step",
            device,
        )
        await pool.execute("DELETE FROM ingest.meter_rollup_dirty WHERE device_id = $1", device)
        await pool.execute(  # one marker left for the refresh to work on
            "INSERT INTO ingest.meter_rollup_dirty (device_id, period_start) VALUES ($1, '2026-02-01 00:00Z')", device
        )
        async with pool.acquire() as connection:
            await connection.execute("SELECT pg_stat_force_next_flush()")
            await connection.execute("SELECT 1")
        vacuumed_before = await pool.fetchval(
            "SELECT last_vacuum FROM pg_stat_all_tables WHERE relid = 'ingest.meter_rollup_dirty'::regclass"
        )
        refresher = RollupRefresher(pool=pool, interval_s=0.01, vacuum_check_every=3)
        async with locker.acquire() as holder, holder.transaction():
            await holder.execute("LOCK TABLE flux.mg_meter_readings IN ACCESS EXCLUSIVE MODE")
            with caplog.at_level(logging.INFO, logger="telemetry_ingest.upkeep.rollups"):
                task = asyncio.create_task(refresher.run_forever())
                try:
                    async with asyncio.timeout(30):
                        while not any(record.message == "rollup markers vacuumed" for record in caplog.records):
                            await asyncio.sleep(0.05)
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        failures = [record for record in caplog.records if record.message == "rollup refresh failed; will retry"]
        vacuumed_after = await pool.fetchval(
            "SELECT last_vacuum FROM pg_stat_all_tables WHERE relid = 'ingest.meter_rollup_dirty'::regclass"
        )
        marker_left = await pool.fetchval("SELECT count(*) FROM ingest.meter_rollup_dirty WHERE device_id = $1", device)
    assert len(failures) >= 3  # no pass before the vacuum succeeded
    assert vacuumed_after is not None and vacuumed_after != vacuumed_before
    assert marker_left == 1  # the failed passes took nothing for good
