"""Fixtures of the scheduler's storage tests: a database of their own, emptied before each test.

The dispatcher and the ack sender claim whatever is due in the whole database, so these tests must not
share one with the end-to-end tests (or with each other's leftovers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from gridloop_common.db import open_pool
from gridloop_common.testing import side_database

_SCHEDULER_TABLES = (
    "scheduler.command_versions, scheduler.commands, scheduler.command_history, scheduler.timers,"
    " scheduler.ack_outbox, scheduler.device_availability, scheduler.device_outcomes, scheduler.upstream_events,"
    " scheduler.device_plans"
)


@pytest.fixture(scope="session")
def scheduler_database_url(database_url: str) -> Iterator[str]:
    """A fresh database beside the session's, migrated as `gridloop-ingest migrate` and `gridloop-scheduler
    migrate` would (telemetry-ingest owns flux.mg_device_registry, which the scheduler reads)."""
    with side_database(
        database_url, "scheduler", owners=(("telemetry-ingest", "telemetry_ingest"), ("scheduler", "scheduler"))
    ) as url:
        yield url


@pytest.fixture
async def pool(scheduler_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the scheduler tests' database, with the scheduler's tables empty."""
    async with open_pool(scheduler_database_url, min_size=1, max_size=8) as opened:
        await opened.execute(f"TRUNCATE {_SCHEDULER_TABLES}")
        yield opened
