"""Fixtures of the scheduler's storage tests: a database of their own, emptied before each test.

The dispatcher and the ack sender claim whatever is due in the whole database, so these tests must not
share one with the end-to-end tests (or with each other's leftovers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from gridloop_common.db import migrate_database, open_pool

_SCHEDULER_TABLES = (
    "scheduler.command_versions, scheduler.commands, scheduler.command_history, scheduler.timers,"
    " scheduler.ack_outbox, scheduler.device_availability, scheduler.device_outcomes, scheduler.upstream_events,"
    " scheduler.device_plans"
)


@pytest.fixture(scope="session")
def scheduler_database_url(database_url: str) -> Iterator[str]:
    """A fresh database beside the session's, migrated as `gridloop-ingest migrate` and `gridloop-scheduler
    migrate` would (telemetry-ingest owns flux.mg_device_registry, which the scheduler reads)."""
    server, name = database_url.rsplit("/", 1)
    url = f"{server}/{name}_scheduler"

    async def migrate() -> None:
        await migrate_database(url, owner="telemetry-ingest", package="telemetry_ingest")
        await migrate_database(url, owner="scheduler", package="scheduler")

    async def drop() -> None:
        connection = await asyncpg.connect(f"{server}/postgres")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}_scheduler" WITH (FORCE)')
        finally:
            await connection.close()

    try:
        asyncio.run(migrate())
        yield url
    finally:
        asyncio.run(drop())


@pytest.fixture
async def pool(scheduler_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the scheduler tests' database, with the scheduler's tables empty."""
    async with open_pool(scheduler_database_url, min_size=1, max_size=8) as opened:
        await opened.execute(f"TRUNCATE {_SCHEDULER_TABLES}")
        yield opened
