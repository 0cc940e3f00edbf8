"""Recomputing the meter rollups that bulk ingest marked as touched, about once a second.

The markers are a queue in a table: every group commit updates its (device, period) rows and every refresh
deletes them, so the table is mostly dead row versions unless something vacuums it. autovacuum would, if it
is on (it is off on some hosts): in a 1.8 M-reading run without it, 650,000 dead markers had piled up in
45 MB. The refresher vacuums the table itself once dead rows pass autovacuum's default threshold (50 plus
20% of the live rows), checked every minute; where autovacuum got there first it finds nothing to do.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from prometheus_client import Counter

__all__ = ["RollupRefresher"]

logger = logging.getLogger(__name__)

REFRESHED = Counter("gridloop_rollup_periods_refreshed_total", "Device 30-minute periods recomputed.")
MARKERS_VACUUMED = Counter(
    "gridloop_rollup_markers_vacuumed_total", "Times telemetry-ingest vacuumed the rollup markers' table."
)

_MARKERS_BLOATED = """
SELECT coalesce(stats.n_dead_tup > $1 + $2 * greatest(stats.n_live_tup, 0), false)
FROM pg_stat_all_tables AS stats
WHERE stats.relid = 'ingest.meter_rollup_dirty'::regclass
"""


class RollupRefresher:
    """Drains ``ingest.meter_rollup_dirty`` in batches; several replicas share the work (SKIP LOCKED).

    ``settle_s``: a period is recomputed only once its first unrefreshed reading is that old. Each
    refresh recomputes the whole 30-minute period, so a device reporting every 5 s would otherwise cost
    a full recompute per reading; waiting lets several readings share one, and rollups lag by about that.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        interval_s: float = 1.0,
        batch_pairs: int = 5000,
        settle_s: float = 0.0,
        vacuum_check_every: int = 60,
        vacuum_threshold_rows: int = 50,
        vacuum_scale_factor: float = 0.2,
    ) -> None:
        if interval_s <= 0 or batch_pairs < 1 or settle_s < 0 or vacuum_check_every < 1:
            raise ValueError("interval_s, batch_pairs and vacuum_check_every must be positive, settle_s not negative")
        if vacuum_threshold_rows < 0 or vacuum_scale_factor < 0:
            raise ValueError("the vacuum threshold and scale factor must not be negative")
        self._pool = pool
        self._interval_s = interval_s
        self._batch_pairs = batch_pairs
        self._settle_s = settle_s
        self._vacuum_check_every = vacuum_check_every  # refresh passes between looks at the dead markers
        self._vacuum_threshold_rows = vacuum_threshold_rows
        self._vacuum_scale_factor = vacuum_scale_factor

    async def refresh_once(self) -> int:
        """Recompute every settled marked period; returns how many (device, period) pairs were refreshed."""
        total = 0
        while True:
            refreshed = int(
                await self._pool.fetchval(
                    "SELECT flux.refresh_dirty_meter_rollups($1, make_interval(secs => $2))",
                    self._batch_pairs,
                    self._settle_s,
                )
            )
            total += refreshed
            if refreshed < self._batch_pairs:
                break
        REFRESHED.inc(total)
        return total

    async def vacuum_if_bloated(self) -> bool:
        """VACUUM the markers' table if its dead rows passed the threshold; returns whether it did."""
        if not await self._pool.fetchval(_MARKERS_BLOATED, self._vacuum_threshold_rows, self._vacuum_scale_factor):
            return False
        started = time.perf_counter()
        await self._pool.execute("VACUUM ingest.meter_rollup_dirty")
        MARKERS_VACUUMED.inc()
        logger.info("rollup markers vacuumed", extra={"seconds": time.perf_counter() - started})
        return True

    async def run_forever(self) -> None:
        passes = 0
        while True:
            passes += 1
            try:
                await self.refresh_once()
            except (asyncpg.PostgresError, OSError) as error:  # OSError includes the command timeout
                logger.warning("rollup refresh failed; will retry", extra={"error": repr(error)})
            # Also after failed passes: a refresh that keeps timing out must not postpone the upkeep for good.
            if passes % self._vacuum_check_every == 0:
                try:
                    await self.vacuum_if_bloated()
                except (asyncpg.PostgresError, OSError) as error:  # OSError includes the command timeout
                    logger.warning("rollup markers vacuum failed; will retry", extra={"error": repr(error)})
            await asyncio.sleep(self._interval_s)
