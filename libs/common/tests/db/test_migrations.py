"""The migration runner against the real PostgreSQL: ordered, recorded, idempotent, concurrent-safe."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gridloop_common.db import Migration, MigrationError, apply_migrations, open_pool


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url, min_size=1, max_size=4) as opened:
        yield opened


def _migrations(schema: str) -> list[Migration]:
    return [
        Migration(1, "create", f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.things (id int PRIMARY KEY)"),
        # Slow on purpose, so a second runner started at the same time must wait for the lock.
        Migration(2, "slow_column", f"SELECT pg_sleep(0.3); ALTER TABLE {schema}.things ADD COLUMN name text"),
    ]


async def test_applies_in_order_records_and_is_idempotent(pool: asyncpg.Pool) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    first = await apply_migrations(pool, owner=owner, migrations=_migrations(schema))
    second = await apply_migrations(pool, owner=owner, migrations=_migrations(schema))
    assert [migration.version for migration in first] == [1, 2]
    assert second == []
    rows = await pool.fetch(
        "SELECT version, name FROM public.gridloop_schema_migrations WHERE owner = $1 ORDER BY version", owner
    )
    assert [(row["version"], row["name"]) for row in rows] == [(1, "create"), (2, "slow_column")]
    await pool.execute(f"INSERT INTO {schema}.things (id, name) VALUES (1, 'x')")


async def test_two_replicas_starting_at_once_apply_each_migration_once(database_url: str) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    async with (
        open_pool(database_url, max_size=2) as replica_a,
        open_pool(database_url, max_size=2) as replica_b,
    ):
        results = await asyncio.gather(
            apply_migrations(replica_a, owner=owner, migrations=_migrations(schema)),
            apply_migrations(replica_b, owner=owner, migrations=_migrations(schema)),
        )
    applied = sorted(migration.version for result in results for migration in result)
    assert applied == [1, 2]  # each once, by whichever replica took the lock first


async def test_a_changed_applied_migration_is_refused(pool: asyncpg.Pool) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    await apply_migrations(pool, owner=owner, migrations=_migrations(schema)[:1])
    edited = [Migration(1, "create", f"CREATE SCHEMA {schema}_other")]
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        await apply_migrations(pool, owner=owner, migrations=edited)


async def test_a_failing_migration_leaves_nothing_half_applied(pool: asyncpg.Pool) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    broken = [Migration(1, "broken", f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (id nonexistent_type)")]
    with pytest.raises(asyncpg.exceptions.UndefinedObjectError):
        await apply_migrations(pool, owner=owner, migrations=broken)
    assert await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0
    assert await pool.fetchval("SELECT count(*) FROM public.gridloop_schema_migrations WHERE owner = $1", owner) == 0


async def test_a_migration_longer_than_the_pools_command_timeout_runs_to_its_end(database_url: str) -> None:
    """A backfill may take minutes; the pool's command timeout (for the services' queries) must not cancel it."""
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    slow = [
        Migration(1, "slow_backfill", f"CREATE SCHEMA {schema}; SELECT pg_sleep(0.6); CREATE TABLE {schema}.done ()")
    ]
    async with open_pool(database_url, max_size=1, command_timeout_s=0.2) as pool:
        with pytest.raises(TimeoutError):
            await pool.execute("SELECT pg_sleep(0.6)")  # the pool's timeout applies to everything else
        applied = await apply_migrations(pool, owner=owner, migrations=slow)
        assert [migration.version for migration in applied] == [1]
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.done")
