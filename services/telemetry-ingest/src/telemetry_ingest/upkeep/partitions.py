"""Keeping the monthly reading partitions: created ahead of time, and analyzed once they changed a lot.

Statistics: a partition that fills after its last ANALYZE (every new month starts with one) leaves the
planner guessing, and the rollup refresh's per-(device, period) lookups then took minutes instead of
seconds: in bench/telemetry.py at 10 M readings, 35,200 touched periods waited over 9 minutes, and were
done ~20 s after an ANALYZE of the new month's partition. autovacuum would analyze it eventually, if it is
on (it is off on some hosts); this does not wait for it. The threshold is autovacuum's default (50 rows
plus 10% of the partition), so where autovacuum got there first this finds nothing to do.
"""

from __future__ import annotations

import logging
import time

import asyncpg
from prometheus_client import Counter

from gridloop_common.clock import Clock, SystemClock

__all__ = ["ANALYZED", "PartitionKeeper"]

logger = logging.getLogger(__name__)

ANALYZED = Counter("gridloop_reading_partitions_analyzed_total", "Reading partitions analyzed by telemetry-ingest.")

# Partitions of the readings tables with more rows changed since their last ANALYZE (by anyone) than
# $1 + $2 x their row count.
_CHANGED_PARTITIONS = """
SELECT format('%I.%I', namespace.nspname, partition.relname)
FROM pg_inherits AS inheritance
JOIN pg_class AS partition ON partition.oid = inheritance.inhrelid
JOIN pg_namespace AS namespace ON namespace.oid = partition.relnamespace
JOIN pg_stat_all_tables AS stats ON stats.relid = partition.oid
WHERE inheritance.inhparent IN ('flux.mg_meter_readings'::regclass, 'flux.mg_bess_readings'::regclass)
  AND stats.n_mod_since_analyze > $1 + $2 * greatest(partition.reltuples, 0)
ORDER BY stats.n_mod_since_analyze DESC
"""


class PartitionKeeper:
    """Makes sure this month and the next ``months_ahead`` have partitions (at start-up, then daily), and
    every ``analyze_interval_s`` analyzes the partitions that changed by more than autovacuum's threshold.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        months_ahead: int = 3,
        interval_s: float = 86_400.0,
        analyze_interval_s: float = 60.0,
        analyze_threshold_rows: int = 50,
        analyze_scale_factor: float = 0.1,
        clock: Clock | None = None,
    ) -> None:
        if interval_s <= 0 or analyze_interval_s <= 0 or analyze_threshold_rows < 0 or analyze_scale_factor < 0:
            raise ValueError("intervals must be positive, the analyze threshold and scale factor not negative")
        self._pool = pool
        self._months_ahead = months_ahead
        self._interval_s = interval_s
        self._analyze_interval_s = analyze_interval_s
        self._analyze_threshold_rows = analyze_threshold_rows
        self._analyze_scale_factor = analyze_scale_factor
        self._clock: Clock = clock or SystemClock()

    async def ensure(self) -> int:
        """Create what is missing; returns how many partitions were created."""
        created = await self._pool.fetchval(
            "SELECT flux.ensure_reading_partitions(date_trunc('month', now())::date, $1)", self._months_ahead
        )
        if created:
            logger.info("reading partitions created", extra={"count": created})
        return int(created or 0)

    async def analyze_changed(self) -> list[str]:
        """ANALYZE every reading partition past the threshold; returns their qualified names."""
        names: list[str] = [
            row[0]
            for row in await self._pool.fetch(
                _CHANGED_PARTITIONS, self._analyze_threshold_rows, self._analyze_scale_factor
            )
        ]
        for name in names:
            started = time.perf_counter()
            # The name comes from format('%I.%I'): quoted as an identifier by the server.
            await self._pool.execute(f"ANALYZE {name}")
            ANALYZED.inc()
            logger.info(
                "reading partition analyzed", extra={"partition": name, "seconds": time.perf_counter() - started}
            )
        return names

    async def run_forever(self) -> None:
        next_ensure = self._clock.monotonic()
        while True:
            try:
                if self._clock.monotonic() >= next_ensure:
                    await self.ensure()
                    next_ensure = self._clock.monotonic() + self._interval_s
                await self.analyze_changed()
            except (asyncpg.PostgresError, OSError) as error:
                logger.warning("partition upkeep failed; will retry", extra={"error": repr(error)})
            await self._clock.sleep(self._analyze_interval_s)
