"""A database of a test package's own beside the session's, migrated by the services that own its schemas."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence

import asyncpg

from gridloop_common.db import migrate_database

__all__ = ["side_database"]


@contextlib.contextmanager
def side_database(database_url: str, suffix: str, *, owners: Sequence[tuple[str, str]]) -> Iterator[str]:
    """The URL of ``<session database>_<suffix>``, migrated by each (owner, package) in order, dropped at the end.

    For tests whose loops claim whatever is due in the whole database (timers, acks, runs), which must not share
    one with the end-to-end tests or with each other's leftovers. Call it from a session-scoped sync fixture.
    """
    server, name = database_url.rsplit("/", 1)
    database = f"{name}_{suffix}"

    async def migrate() -> None:
        for owner, package in owners:
            await migrate_database(f"{server}/{database}", owner=owner, package=package)

    async def drop() -> None:
        connection = await asyncpg.connect(f"{server}/postgres")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await connection.close()

    try:
        asyncio.run(migrate())
        yield f"{server}/{database}"
    finally:
        asyncio.run(drop())
