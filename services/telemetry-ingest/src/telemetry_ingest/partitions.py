"""Keeping monthly reading partitions created ahead of time, so nothing lands in the default partition."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

__all__ = ["PartitionKeeper"]

logger = logging.getLogger(__name__)


class PartitionKeeper:
    """Once a day (and at start-up) make sure this month and the next ``months_ahead`` have partitions."""

    def __init__(self, *, pool: asyncpg.Pool, months_ahead: int = 3, interval_s: float = 86_400.0) -> None:
        self._pool = pool
        self._months_ahead = months_ahead
        self._interval_s = interval_s

    async def ensure(self) -> int:
        """Create what is missing; returns how many partitions were created."""
        created = await self._pool.fetchval(
            "SELECT flux.ensure_reading_partitions(date_trunc('month', now())::date, $1)", self._months_ahead
        )
        if created:
            logger.info("reading partitions created", extra={"count": created})
        return int(created or 0)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.ensure()
            except (asyncpg.PostgresError, OSError) as error:
                logger.warning("partition upkeep failed; will retry", extra={"error": repr(error)})
                await asyncio.sleep(60)
                continue
            await asyncio.sleep(self._interval_s)
