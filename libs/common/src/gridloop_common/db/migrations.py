"""SQL migrations per service: versioned for tables, repeatable for code; recorded, idempotent, replica-safe.

A service keeps its migrations in a ``migrations`` folder of its package:

- ``NNNN_description.sql``: versioned. Tables, indexes, grants, constraints, seed rows: each file runs
  once, in version order, and is recorded with its checksum; editing a file after it was applied is
  refused (add a new one instead).
- ``repeatable/<kind>.<schema>.<object>.sql``, kind ``function``, ``view`` or ``trigger``: the present
  definition of one function (with its overloads and grants), view or trigger. Applied after the
  versioned files, functions first, then views, then triggers, each kind in name order; re-applied
  whenever its checksum differs from the one recorded (Flyway's repeatable migrations are the model).
  Such a file must be safe to run again: ``CREATE OR REPLACE FUNCTION``, ``DROP TRIGGER IF EXISTS`` then
  ``CREATE TRIGGER``, a ``DROP FUNCTION IF EXISTS`` for a signature it no longer defines.

``apply_migrations`` takes a PostgreSQL advisory lock, so when two replicas start at once one applies
and the other waits and then finds nothing to do. Each file runs in its own transaction.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources

import asyncpg

from gridloop_common.db.pool import ensure_database, open_pool
from gridloop_common.lifecycle import StartupError

__all__ = ["Migration", "MigrationError", "apply_migrations", "load_migrations", "migrate_database"]

logger = logging.getLogger(__name__)

# One lock for every service's migrations: schema changes are rare, and serialising them is simplest.
_ADVISORY_LOCK_KEY = 0x6772_6964_6C6F_6F70 & 0x7FFF_FFFF_FFFF_FFFF  # "gridloop"
# A migration may rewrite or backfill a large table (minutes for millions of rows); the pool's command timeout
# would cancel it half-way, and every retry with it. A migration runs to its end; PostgreSQL's own
# statement_timeout, if the server sets one, still applies.
MIGRATION_TIMEOUT_S = 24 * 3600.0
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Functions before views before triggers: a view may call a function, a trigger needs its function.
_REPEATABLE_KINDS = ("function", "view", "trigger")
_REPEATABLE_NAME = re.compile(rf"^(?P<name>(?:{'|'.join(_REPEATABLE_KINDS)})\.[a-z0-9_]+\.[a-z0-9_.]+)\.sql$")
_REPEATABLE_FOLDER = "repeatable"

_LEDGER = """
CREATE TABLE IF NOT EXISTS public.gridloop_schema_migrations (
    owner text NOT NULL,
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, version)
);
CREATE TABLE IF NOT EXISTS public.gridloop_schema_repeatables (
    owner text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
)
"""


class MigrationError(StartupError):
    """A migration set is malformed, or the database's recorded migrations no longer match the files.

    A StartupError, so `<service> migrate` and a starting service end with this one line, not a traceback."""


@dataclass(frozen=True)
class Migration:
    """One SQL file: versioned (``version`` set) or repeatable (``version`` None, ``name`` its file stem)."""

    version: int | None
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def repeatable(self) -> bool:
        return self.version is None

    @property
    def label(self) -> str:
        return self.name if self.version is None else f"{self.version:04d}_{self.name}"


def _version_order(migration: Migration) -> int:
    return migration.version or 0


def _repeatable_order(migration: Migration) -> tuple[int, str]:
    return _REPEATABLE_KINDS.index(migration.name.split(".", 1)[0]), migration.name


def load_migrations(package: str) -> list[Migration]:
    """Read ``<package>/migrations/*.sql`` in version order, then ``repeatable/*.sql`` in apply order."""
    folder = resources.files(package) / "migrations"
    versioned: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"{package}: migration file {entry.name!r} is not named NNNN_description.sql")
        versioned.append(Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8")))
    versioned.sort(key=_version_order)
    versions = [migration.version for migration in versioned]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{package}: two migrations share a version number")
    repeatables: list[Migration] = []
    repeatable_folder = folder / _REPEATABLE_FOLDER
    if repeatable_folder.is_dir():
        for entry in repeatable_folder.iterdir():
            if not entry.name.endswith(".sql"):
                continue
            match = _REPEATABLE_NAME.match(entry.name)
            if match is None:
                raise MigrationError(
                    f"{package}: repeatable file {entry.name!r} is not named <{'|'.join(_REPEATABLE_KINDS)}>"
                    ".<schema>.<object>.sql"
                )
            repeatables.append(Migration(None, match["name"], entry.read_text(encoding="utf-8")))
    repeatables.sort(key=_repeatable_order)
    return versioned + repeatables


def _check_versioned(owner: str, migrations: list[Migration], recorded: dict[int, tuple[str, str]]) -> None:
    """Refuse a ledger the files no longer describe, saying in one line what to do."""
    files = {migration.version: migration for migration in migrations if migration.version is not None}
    for version, (name, checksum) in sorted(recorded.items()):
        migration = files.get(version)
        if migration is None:
            continue  # recorded by a newer release; an older replica still running during a rollout is harmless
        if migration.name != name:
            raise MigrationError(
                f"{owner}: this database records migration {version:04d}_{name} where the file is now "
                f"{migration.label}: it was migrated by the chain squashed into the baseline; drop the database "
                f"(or its {owner} schemas and ledger rows) and migrate again"
            )
        if checksum != migration.checksum:
            raise MigrationError(
                f"{owner}: migration {migration.label} was changed after it was applied; add a new migration instead"
            )


async def _apply_one(connection: asyncpg.Connection, owner: str, migration: Migration) -> None:
    logger.info("applying migration", extra={"owner": owner, "migration": migration.label})
    started = time.perf_counter()
    async with connection.transaction():
        if migration.repeatable:
            # As pg_restore does: a function's body is checked when it runs, not when it is created, so one
            # SQL function may call another whose file comes later in name order.
            await connection.execute("SET LOCAL check_function_bodies = off")
            await connection.execute(migration.sql, timeout=MIGRATION_TIMEOUT_S)
            await connection.execute(
                "INSERT INTO public.gridloop_schema_repeatables (owner, name, checksum) VALUES ($1, $2, $3)"
                " ON CONFLICT (owner, name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()",
                owner,
                migration.name,
                migration.checksum,
            )
        else:
            await connection.execute(migration.sql, timeout=MIGRATION_TIMEOUT_S)
            await connection.execute(
                "INSERT INTO public.gridloop_schema_migrations (owner, version, name, checksum)"
                " VALUES ($1, $2, $3, $4)",
                owner,
                migration.version,
                migration.name,
                migration.checksum,
            )
    logger.info(
        "migration applied",
        extra={"owner": owner, "migration": migration.label, "seconds": round(time.perf_counter() - started, 3)},
    )


async def apply_migrations(pool: asyncpg.Pool, *, owner: str, migrations: list[Migration]) -> list[Migration]:
    """Apply what is not yet applied for ``owner`` (repeatables: what changed); returns what this call applied."""
    applied_now: list[Migration] = []
    versioned = sorted((migration for migration in migrations if not migration.repeatable), key=_version_order)
    repeatables = sorted((migration for migration in migrations if migration.repeatable), key=_repeatable_order)
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            await connection.execute(_LEDGER)
            rows = await connection.fetch(
                "SELECT version, name, checksum FROM public.gridloop_schema_migrations WHERE owner = $1", owner
            )
            recorded = {row["version"]: (row["name"], row["checksum"]) for row in rows}
            _check_versioned(owner, versioned, recorded)
            for migration in versioned:
                if migration.version not in recorded:
                    await _apply_one(connection, owner, migration)
                    applied_now.append(migration)
            rows = await connection.fetch(
                "SELECT name, checksum FROM public.gridloop_schema_repeatables WHERE owner = $1", owner
            )
            recorded_repeatables = {row["name"]: row["checksum"] for row in rows}
            for migration in repeatables:
                if recorded_repeatables.get(migration.name) != migration.checksum:
                    await _apply_one(connection, owner, migration)
                    applied_now.append(migration)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now


async def migrate_database(url: str, *, owner: str, package: str, startup_timeout_s: float = 60.0) -> list[Migration]:
    """Create the database if needed and apply ``package``'s migrations for ``owner`` (`<service> migrate`)."""
    await ensure_database(url)
    async with open_pool(url, min_size=1, max_size=1, startup_timeout_s=startup_timeout_s) as pool:
        return await apply_migrations(pool, owner=owner, migrations=load_migrations(package))
