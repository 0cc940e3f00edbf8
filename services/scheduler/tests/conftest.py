"""Fixtures of the scheduler's storage tests: a database of their own, emptied before each test.

The dispatcher and the ack sender claim whatever is due in the whole database, so these tests must not
share one with the end-to-end tests (or with each other's leftovers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from gridloop_common.db import apply_migrations, load_migrations, open_pool

_SCHEDULER_TABLES = (
    "scheduler.command_versions, scheduler.commands, scheduler.command_history, scheduler.timers,"
    " scheduler.ack_outbox, scheduler.device_availability, scheduler.device_outcomes, scheduler.upstream_events"
)


@pytest.fixture(scope="session")
def scheduler_database_url(database_url: str) -> Iterator[str]:
    """A fresh database beside the session's, with the scheduler's and telemetry-ingest's migrations."""
    server, name = database_url.rsplit("/", 1)
    own = f"{name}_scheduler"

    async def administer(statement: str) -> None:
        connection = await asyncpg.connect(f"{server}/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def migrate() -> None:
        async with open_pool(f"{server}/{own}", min_size=1, max_size=1) as opened:
            # telemetry-ingest owns flux.mg_device_registry, which the scheduler reads.
            await apply_migrations(opened, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
            await apply_migrations(opened, owner="scheduler", migrations=load_migrations("scheduler"))

    asyncio.run(administer(f'CREATE DATABASE "{own}"'))
    try:
        asyncio.run(migrate())
        yield f"{server}/{own}"
    finally:
        asyncio.run(administer(f'DROP DATABASE IF EXISTS "{own}" WITH (FORCE)'))


@pytest.fixture
async def pool(scheduler_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the scheduler tests' database, with the scheduler's tables empty."""
    async with open_pool(scheduler_database_url, min_size=1, max_size=8) as opened:
        await opened.execute(f"TRUNCATE {_SCHEDULER_TABLES}")
        yield opened
