"""Ordered SQL migrations per service: recorded, idempotent, and safe when replicas start together.

A service keeps its migrations as ``NNNN_description.sql`` files in a ``migrations`` folder of its
package. ``apply_migrations`` takes a PostgreSQL advisory lock, so when two replicas start at once
one applies and the other waits and then finds nothing to do. Each file runs in its own
transaction and is recorded with its checksum; editing a file after it was applied is refused.
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

__all__ = ["Migration", "MigrationError", "apply_migrations", "load_migrations", "migrate_database"]

logger = logging.getLogger(__name__)

# One lock for every service's migrations: schema changes are rare, and serialising them is simplest.
_ADVISORY_LOCK_KEY = 0x6772_6964_6C6F_6F70 & 0x7FFF_FFFF_FFFF_FFFF  # "gridloop"
# A migration may rewrite or backfill a large table (telemetry-ingest 0015 fills a column of every rollup row:
# over 30 s for a million rows); the pool's command timeout would cancel it half-way, and every retry with it.
# A migration runs to its end; PostgreSQL's own statement_timeout, if the server sets one, still applies.
MIGRATION_TIMEOUT_S = 24 * 3600.0
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS public.gridloop_schema_migrations (
    owner text NOT NULL,
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, version)
)
"""


class MigrationError(Exception):
    """A migration set is malformed, or a recorded migration no longer matches its file."""


@dataclass(frozen=True)
class Migration:
    """One SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(package: str) -> list[Migration]:
    """Read ``<package>/migrations/*.sql`` in version order."""
    folder = resources.files(package) / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"{package}: migration file {entry.name!r} is not named NNNN_description.sql")
        found.append(Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{package}: two migrations share a version number")
    return found


async def apply_migrations(pool: asyncpg.Pool, *, owner: str, migrations: list[Migration]) -> list[Migration]:
    """Apply what is not yet applied for ``owner``; returns the migrations applied by this call."""
    applied_now: list[Migration] = []
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            await connection.execute(_LEDGER)
            rows = await connection.fetch(
                "SELECT version, checksum FROM public.gridloop_schema_migrations WHERE owner = $1", owner
            )
            recorded = {row["version"]: row["checksum"] for row in rows}
            for migration in migrations:
                if migration.version in recorded:
                    if recorded[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"{owner}: migration {migration.version:04d}_{migration.name} was changed "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                logger.info(
                    "applying migration",
                    extra={"owner": owner, "migration": f"{migration.version:04d}_{migration.name}"},
                )
                started = time.perf_counter()
                async with connection.transaction():
                    await connection.execute(migration.sql, timeout=MIGRATION_TIMEOUT_S)
                    await connection.execute(
                        "INSERT INTO public.gridloop_schema_migrations (owner, version, name, checksum)"
                        " VALUES ($1, $2, $3, $4)",
                        owner,
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(migration)
                logger.info(
                    "migration applied",
                    extra={
                        "owner": owner,
                        "migration": f"{migration.version:04d}_{migration.name}",
                        "seconds": round(time.perf_counter() - started, 3),
                    },
                )
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now


async def migrate_database(url: str, *, owner: str, package: str, startup_timeout_s: float = 60.0) -> list[Migration]:
    """Create the database if needed and apply ``package``'s migrations for ``owner`` (`<service> migrate`)."""
    await ensure_database(url)
    async with open_pool(url, min_size=1, max_size=1, startup_timeout_s=startup_timeout_s) as pool:
        return await apply_migrations(pool, owner=owner, migrations=load_migrations(package))
