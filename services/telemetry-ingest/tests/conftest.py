"""Fixtures of telemetry-ingest's tests: a migrated flux schema on the session's fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from telemetry_ingest.api.postgrest import Catalogue, load_catalogue

OWNER = "telemetry-ingest"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session database with the flux migrations applied (a no-op after the first test)."""
    async with open_pool(database_url, min_size=1, max_size=4) as opened:
        await apply_migrations(opened, owner=OWNER, migrations=load_migrations("telemetry_ingest"))
        yield opened


@pytest.fixture
async def catalogue(pool: asyncpg.Pool) -> Catalogue:
    async with pool.acquire() as connection:
        return await load_catalogue(connection)
