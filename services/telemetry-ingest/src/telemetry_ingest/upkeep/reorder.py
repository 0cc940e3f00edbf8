"""Rewriting closed days of readings in (device_id, time) order, so one device's day is a few pages.

Readings arrive interleaved across the fleet, so without this a device's day lies on as many heap pages
as it has readings, and reading it cold costs a random read per reading. Once a UTC day has been closed
for ``after_s``, ``ingest.reorder_readings_day`` (migration 0012) moves its rows in one transaction,
sorted; readers and writers are not blocked. Each pass then vacuums the partitions it rewrote, so the
space of the moved rows is reused (autovacuum would too, where it runs).

A reading stored for a day after that day was reordered is not moved again: late data is rare, and costs
only its own page reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import Final

import asyncpg
from prometheus_client import Counter, Gauge

from gridloop_common.clock import Clock, SystemClock

__all__ = ["READINGS_TABLES", "DayReorderer"]

logger = logging.getLogger(__name__)

READINGS_TABLES: Final = ("mg_meter_readings", "mg_bess_readings")

# "dates", not "days": promtool takes a name with the token "days" for a duration in a non-base unit.
REORDERED_DATES = Counter(
    "gridloop_reordered_dates_total", "UTC dates (days) of readings rewritten in device order.", ["table"]
)
REORDERED_ROWS = Counter("gridloop_reordered_rows_total", "Readings rewritten in device order.", ["table"])
PENDING_DATES = Gauge(
    "gridloop_reorder_pending_dates", "Closed UTC dates (days) of readings not yet in device order.", ["table"]
)


class DayReorderer:
    """Finds closed, not yet reordered days of each readings table and reorders them, oldest first."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        after_s: float = 3600.0,
        interval_s: float = 900.0,
        clock: Clock | None = None,
        day_timeout_s: float = 3600.0,
    ) -> None:
        if after_s < 0 or interval_s <= 0 or day_timeout_s <= 0:
            raise ValueError("after_s must not be negative, interval_s and day_timeout_s must be positive")
        # A day of a large fleet (millions of rows) takes minutes to move: far past the pool's command timeout.
        self._day_timeout_s = day_timeout_s
        self._pool = pool
        self._after_s = after_s
        self._interval_s = interval_s
        self._clock: Clock = clock or SystemClock()

    def last_closed_day(self) -> date:
        """The newest UTC day that ended at least ``after_s`` ago."""
        settled = datetime.fromtimestamp(self._clock.now().timestamp() - self._after_s, tz=UTC)
        return settled.date() - timedelta(days=1)

    async def pending_days(self, table: str) -> list[date]:
        """Days up to the last closed one that hold readings of ``table`` and were not reordered."""
        if table not in READINGS_TABLES:
            raise ValueError(f"not a readings table: {table!r}")
        # One probe of the time index per unreordered day since the oldest reading: a few hundred at most
        # for a year of retention, each a single index descent.
        rows = await self._pool.fetch(
            f"""
            SELECT series.day_start::date AS day
            FROM (SELECT (min(time) AT TIME ZONE 'UTC')::date AS first_day FROM flux.{table}) AS bounds,
                -- timestamps without time zone, so that AT TIME ZONE 'UTC' below makes UTC midnights
                generate_series(bounds.first_day::timestamp, $1::date::timestamp, interval '1 day')
                    AS series (day_start)
            WHERE NOT EXISTS (
                SELECT FROM ingest.reordered_days AS done
                WHERE done.table_name = $2 AND done.day = series.day_start::date
            )
            AND EXISTS (
                SELECT FROM flux.{table} AS readings
                WHERE readings.time >= series.day_start AT TIME ZONE 'UTC'
                    AND readings.time < (series.day_start + interval '1 day') AT TIME ZONE 'UTC'
            )
            ORDER BY day
            """,
            self.last_closed_day(),
            table,
        )
        return [row["day"] for row in rows]

    async def reorder_day(self, table: str, day: date) -> tuple[int | None, str | None]:
        """Reorder one day; returns (rows moved or None if it was done already, the partition holding it)."""
        day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        async with self._pool.acquire() as connection:
            partition = await connection.fetchval(
                f"SELECT tableoid::regclass::text FROM flux.{table} WHERE time >= $1 AND time < $2 LIMIT 1",
                day_start,
                day_start + timedelta(days=1),
            )
            moved = await connection.fetchval(
                "SELECT ingest.reorder_readings_day($1, $2)", table, day, timeout=self._day_timeout_s
            )
        return (None if moved is None else int(moved)), partition

    async def reorder_once(self) -> int:
        """Reorder every pending day of both tables, then vacuum what was rewritten; returns rows moved."""
        total = 0
        rewritten: set[str] = set()
        for table in READINGS_TABLES:
            days = await self.pending_days(table)
            PENDING_DATES.labels(table).set(len(days))
            for position, day in enumerate(days, start=1):
                started = time.perf_counter()
                moved, partition = await self.reorder_day(table, day)
                PENDING_DATES.labels(table).set(len(days) - position)
                if moved is None:
                    continue  # another replica did it meanwhile
                total += moved
                REORDERED_DATES.labels(table).inc()
                REORDERED_ROWS.labels(table).inc(moved)
                if partition is not None and moved:
                    rewritten.add(partition)
                logger.info(
                    "readings day reordered",
                    extra={
                        "table": table,
                        "day": day.isoformat(),
                        "rows": moved,
                        "seconds": round(time.perf_counter() - started, 3),
                        "done": position,
                        "pending": len(days) - position,
                    },
                )
        for partition in sorted(rewritten):
            started = time.perf_counter()
            # The moved rows' old versions are dead: vacuum makes their space reusable now, not whenever
            # autovacuum (off on some machines) comes by. VACUUM cannot run inside a transaction.
            async with self._pool.acquire() as connection:
                await connection.execute(f"VACUUM (ANALYZE) {partition}", timeout=self._day_timeout_s)
            logger.info(
                "partition vacuumed", extra={"partition": partition, "seconds": round(time.perf_counter() - started, 3)}
            )
        return total

    async def run_forever(self) -> None:
        while True:
            try:
                await self.reorder_once()
            except (asyncpg.PostgresError, OSError) as error:
                logger.warning("reordering readings failed; will retry", extra={"error": repr(error)})
            await asyncio.sleep(self._interval_s)
