"""The catalogue the services' migrations build: every function and trigger comes from its repeatable file, and
running those files again changes nothing (libs/common/README.md, "Migrations")."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gridloop_common.db import Migration, apply_migrations, load_migrations, open_pool

pytestmark = pytest.mark.connected

OWNERS = {"telemetry-ingest": "telemetry_ingest", "scheduler": "scheduler", "optimizer": "optimizer"}
SCHEMAS = ("flux", "ingest", "scheduler", "optimizer")

_CATALOGUE = """
SELECT 'function ' || p.oid::regprocedure::text AS object,
       pg_get_functiondef(p.oid) || coalesce(p.proacl::text, '') AS definition
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = ANY ($1::text[])
UNION ALL
SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass::text, pg_get_triggerdef(t.oid)
FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = ANY ($1::text[]) AND NOT t.tgisinternal AND t.tgparentid = 0
"""


def _repeatables() -> list[Migration]:
    return [migration for package in OWNERS.values() for migration in load_migrations(package) if migration.repeatable]


@pytest.fixture
async def migrated(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url, min_size=1, max_size=2) as pool:
        for owner, package in OWNERS.items():
            await apply_migrations(pool, owner=owner, migrations=load_migrations(package))
        yield pool


async def test_every_function_is_defined_by_the_repeatable_file_named_after_it(migrated: asyncpg.Pool) -> None:
    rows = await migrated.fetch(
        "SELECT DISTINCT n.nspname || '.' || p.proname AS name FROM pg_proc AS p"
        " JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE n.nspname = ANY ($1::text[])",
        list(SCHEMAS),
    )
    files = {migration.name for migration in _repeatables() if migration.name.startswith("function.")}
    assert {f"function.{row['name']}" for row in rows} == files


async def test_every_trigger_is_created_by_a_trigger_file(migrated: asyncpg.Pool) -> None:
    rows = await migrated.fetch(
        "SELECT t.tgname, t.tgrelid::regclass::text AS relation FROM pg_trigger AS t"
        " JOIN pg_class AS c ON c.oid = t.tgrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY ($1::text[]) AND NOT t.tgisinternal AND t.tgparentid = 0",
        list(SCHEMAS),
    )
    created = {
        (match["name"], match["relation"])
        for migration in _repeatables()
        if migration.name.startswith("trigger.")
        for match in re.finditer(r"CREATE TRIGGER (?P<name>\w+)\s.*?\sON (?P<relation>[\w.]+)", migration.sql, re.S)
    }
    assert len(rows) >= 7  # the rollup, realtime, registry and metadata triggers
    assert {(row["tgname"], row["relation"]) for row in rows} == created


async def test_running_every_repeatable_file_again_changes_nothing(migrated: asyncpg.Pool) -> None:
    before = {row["object"]: row["definition"] for row in await migrated.fetch(_CATALOGUE, list(SCHEMAS))}
    async with migrated.acquire() as connection:
        for migration in _repeatables():
            async with connection.transaction():
                await connection.execute(migration.sql)
    after = {row["object"]: row["definition"] for row in await migrated.fetch(_CATALOGUE, list(SCHEMAS))}
    assert len(before) >= len(_repeatables())  # every file defines at least one object: the comparison is not vacuous
    assert after == before


@pytest.fixture
async def private_database_url(database_url: str) -> AsyncIterator[str]:
    """An empty database of its own beside the session's."""
    server, _, name = database_url.rpartition("/")
    private = f"{name}_{uuid.uuid4().hex[:6]}"
    connection = await asyncpg.connect(f"{server}/postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{private}"')
        yield f"{server}/{private}"
    finally:
        await connection.execute(f'DROP DATABASE IF EXISTS "{private}" WITH (FORCE)')
        await connection.close()


async def test_a_database_migrated_before_the_baseline_is_refused_in_one_line(
    private_database_url: str, service_environment: dict[str, str]
) -> None:
    """A development database from before the squash: `migrate` says what to do, without a traceback."""
    async with open_pool(private_database_url, min_size=1, max_size=1) as pool:
        old_chain = [Migration(1, "flux_schema", "CREATE SCHEMA flux"), Migration(2, "meter_rollups", "SELECT 1")]
        await apply_migrations(pool, owner="telemetry-ingest", migrations=old_chain)

    result = subprocess.run(
        [str(Path(sys.executable).with_name("gridloop-ingest")), "migrate"],
        env={**service_environment, "GRIDLOOP_DATABASE_URL": private_database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gridloop-ingest: telemetry-ingest: this database records migration 0001_flux_schema")
    assert "now 0001_baseline" in last and "drop the database" in last
