"""Recomputing the meter rollups that bulk ingest marked as touched, about once a second."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from prometheus_client import Counter

__all__ = ["RollupRefresher"]

logger = logging.getLogger(__name__)

REFRESHED = Counter("gridloop_rollup_periods_refreshed_total", "Device 30-minute periods recomputed.")


class RollupRefresher:
    """Drains ``ingest.meter_rollup_dirty`` in batches; several replicas share the work (SKIP LOCKED).

    ``settle_s``: a period is recomputed only once its first unrefreshed reading is that old. Each
    refresh recomputes the whole 30-minute period, so a device reporting every 5 s would otherwise cost
    a full recompute per reading; waiting lets several readings share one, and rollups lag by about that.
    """

    def __init__(
        self, *, pool: asyncpg.Pool, interval_s: float = 1.0, batch_pairs: int = 5000, settle_s: float = 0.0
    ) -> None:
        if interval_s <= 0 or batch_pairs < 1 or settle_s < 0:
            raise ValueError("interval_s and batch_pairs must be positive and settle_s not negative")
        self._pool = pool
        self._interval_s = interval_s
        self._batch_pairs = batch_pairs
        self._settle_s = settle_s

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

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except (asyncpg.PostgresError, OSError) as error:
                logger.warning("rollup refresh failed; will retry", extra={"error": repr(error)})
            await asyncio.sleep(self._interval_s)
