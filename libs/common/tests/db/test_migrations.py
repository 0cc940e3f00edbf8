"""The migration runner against the real PostgreSQL: ordered, recorded, idempotent, concurrent-safe."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gridloop_common.db import Migration, MigrationError, apply_migrations, load_migrations, open_pool


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


def _with_code(schema: str, answer: int) -> list[Migration]:
    """A table, a function whose body may change, and a trigger on the table that calls it."""
    return [
        Migration(1, "create", f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.things (id int PRIMARY KEY, n int)"),
        Migration(
            None,
            f"trigger.{schema}.numbered",
            f"DROP TRIGGER IF EXISTS numbered ON {schema}.things;"
            f" CREATE TRIGGER numbered BEFORE INSERT ON {schema}.things"
            f" FOR EACH ROW EXECUTE FUNCTION {schema}.number()",
        ),
        Migration(
            None,
            f"function.{schema}.number",
            f"CREATE OR REPLACE FUNCTION {schema}.number() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN NEW.n := {answer}; RETURN NEW; END $$",
        ),
    ]


async def test_repeatables_run_after_the_versioned_functions_before_triggers_and_again_only_when_changed(
    pool: asyncpg.Pool,
) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    first = await apply_migrations(pool, owner=owner, migrations=_with_code(schema, 1))
    unchanged = await apply_migrations(pool, owner=owner, migrations=_with_code(schema, 1))
    changed = await apply_migrations(pool, owner=owner, migrations=_with_code(schema, 2))

    assert [migration.label for migration in first] == [
        "0001_create",
        f"function.{schema}.number",
        f"trigger.{schema}.numbered",
    ]
    assert unchanged == []
    assert [migration.label for migration in changed] == [f"function.{schema}.number"]
    assert await pool.fetchval(f"INSERT INTO {schema}.things (id) VALUES (1) RETURNING n") == 2
    recorded = await pool.fetchval(
        "SELECT checksum FROM public.gridloop_schema_repeatables WHERE owner = $1 AND name = $2",
        owner,
        f"function.{schema}.number",
    )
    assert recorded == _with_code(schema, 2)[2].checksum


async def test_a_sql_function_may_call_one_whose_file_comes_later(pool: asyncpg.Pool) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    migrations = [
        Migration(1, "create", f"CREATE SCHEMA {schema}"),
        Migration(
            None,
            f"function.{schema}.a_caller",
            f"CREATE OR REPLACE FUNCTION {schema}.a_caller() RETURNS int"
            f" LANGUAGE sql AS $$ SELECT {schema}.b_callee() + 1 $$",
        ),
        Migration(
            None,
            f"function.{schema}.b_callee",
            f"CREATE OR REPLACE FUNCTION {schema}.b_callee() RETURNS int LANGUAGE sql AS $$ SELECT 41 $$",
        ),
    ]
    await apply_migrations(pool, owner=owner, migrations=migrations)
    assert await pool.fetchval(f"SELECT {schema}.a_caller()") == 42


async def test_a_failing_repeatable_is_not_recorded_and_is_tried_again(pool: asyncpg.Pool) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    base = Migration(1, "create", f"CREATE SCHEMA {schema}")
    broken = Migration(
        None, f"view.{schema}.things", f"CREATE OR REPLACE VIEW {schema}.things AS SELECT * FROM nowhere"
    )
    with pytest.raises(asyncpg.exceptions.UndefinedTableError):
        await apply_migrations(pool, owner=owner, migrations=[base, broken])
    fixed = Migration(None, f"view.{schema}.things", f"CREATE OR REPLACE VIEW {schema}.things AS SELECT 1 AS one")
    applied = await apply_migrations(pool, owner=owner, migrations=[base, fixed])
    assert [migration.label for migration in applied] == [f"view.{schema}.things"]
    assert await pool.fetchval(f"SELECT one FROM {schema}.things") == 1


async def test_a_database_migrated_by_the_squashed_chain_is_told_to_start_again(pool: asyncpg.Pool) -> None:
    owner, schema = f"owner_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    await apply_migrations(pool, owner=owner, migrations=_migrations(schema))  # 0001_create, 0002_slow_column
    baseline = [Migration(1, "baseline", f"CREATE SCHEMA {schema}_new")]
    with pytest.raises(
        MigrationError, match=r"records migration 0001_create where the file is now 0001_baseline.*drop"
    ):
        await apply_migrations(pool, owner=owner, migrations=baseline)
    assert await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", f"{schema}_new") == 0


def test_load_migrations_orders_versions_then_functions_views_and_triggers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "migrations_fixture_package"
    (package / "migrations" / "repeatable").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("0002_more.sql", "0001_baseline.sql"):
        (package / "migrations" / name).write_text("SELECT 1")
    for name in ("trigger.s.a.sql", "view.s.b.sql", "function.s.z.sql", "function.s.c.sql"):
        (package / "migrations" / "repeatable" / name).write_text("SELECT 1")
    monkeypatch.syspath_prepend(str(tmp_path))

    loaded = load_migrations("migrations_fixture_package")

    assert [migration.label for migration in loaded] == [
        "0001_baseline",
        "0002_more",
        "function.s.c",
        "function.s.z",
        "view.s.b",
        "trigger.s.a",
    ]
    (package / "migrations" / "repeatable" / "s.d.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="is not named"):
        load_migrations("migrations_fixture_package")
