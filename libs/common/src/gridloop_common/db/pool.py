"""asyncpg connection pools, opened as async context managers, with start-up retry."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.lifecycle import StartupError

__all__ = ["database_ready", "ensure_database", "open_pool"]

logger = logging.getLogger(__name__)


async def _init_connection(connection: Any) -> None:
    # json/jsonb as Python values rather than strings, in both directions.
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _release_without_round_trip(connection: Any) -> None:
    """What the pool sends the server when a connection is released: nothing.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release,
    one more round trip for every pooled statement: for a single ``pool.execute`` it doubled the round
    trips, and on a small host the services' time goes to those syscalls. Nothing here keeps session state
    on a pooled connection: settings are ``SET LOCAL`` / ``set_config(..., true)``, advisory locks are
    transaction-scoped (migrations release their session lock in a ``finally``), cursors live in
    transactions, and whoever LISTENs on a pooled connection removes its listeners before releasing it.
    asyncpg still rolls back a transaction left open and drops the client-side listeners before this runs.
    """


@contextlib.asynccontextmanager
async def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    startup_timeout_s: float = 60.0,
    command_timeout_s: float = 30.0,
    application_name: str = "gridloop",
    clock: Clock | None = None,
) -> AsyncIterator[asyncpg.Pool]:
    """Open a pool (retrying until ``startup_timeout_s``) and close it when the block exits."""
    clock = clock or SystemClock()
    deadline = clock.monotonic() + startup_timeout_s
    delay = 0.2
    while True:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout_s,
                init=_init_connection,
                reset=_release_without_round_trip,
                server_settings={"application_name": application_name},
            )
            break
        except (
            OSError,
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.TooManyConnectionsError,
        ) as error:
            if clock.monotonic() + delay > deadline:
                raise StartupError(f"PostgreSQL unreachable at {_redact(url)}: {error}") from error
            logger.warning("database not reachable yet, retrying", extra={"error": str(error), "retry_in_s": delay})
            await clock.sleep(delay)
            delay = min(delay * 2, 5.0)
        except asyncpg.exceptions.InvalidCatalogNameError as error:
            raise StartupError(
                f"database in {_redact(url)} does not exist: run `gridloop migrate` to create it"
            ) from error
        except asyncpg.exceptions.PostgresError as error:
            raise StartupError(f"PostgreSQL refused the connection to {_redact(url)}: {error}") from error
    try:
        yield pool
    finally:
        await pool.close()


async def database_ready(pool: asyncpg.Pool) -> bool:
    """True when a connection can be had and answers (a readiness check)."""
    async with pool.acquire(timeout=2.0) as connection:
        return bool(await connection.fetchval("SELECT true"))


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. Returns True when it was created."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    maintenance_url = urlunsplit(parts._replace(path="/postgres"))
    connection = await asyncpg.connect(maintenance_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            quoted = '"' + name.replace('"', '""') + '"'
            await connection.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.exceptions.DuplicateDatabaseError:
            return False  # another process created it at the same moment
        logger.info("database created", extra={"database": name})
        return True
    finally:
        await connection.close()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
