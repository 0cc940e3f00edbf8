"""How registry changes reach the agent: the LISTEN connection (and its reconnection) and the missing-registry retry.

Real PostgreSQL: each test that needs the registry absent gets an empty database of its own; telemetry-ingest's
own `migrate` creates the registry, as it would in a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from device_agent.fleet import Fleet
from device_agent.handlers import UNKNOWN_DEVICE_WAIT_S, unknown_device_wait_s
from device_agent.modbus.bus import ModbusBus
from device_agent.registry_feed import REGISTRY_CHANNEL, listen_for_registry_changes
from gridloop_common.db import open_pool
from gridloop_common.messaging import open_broker
from gridloop_common.settings import AmqpSettings

LONG_PERIOD_S = 300.0  # the periodic re-read, set so that it can never be what a test sees


@pytest.fixture
async def empty_database_url(database_url: str) -> AsyncIterator[str]:
    server = database_url.rsplit("/", 1)[0]
    name = f"gridloop_agent_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{server}/{name}"
    finally:
        admin = await asyncpg.connect(f"{server}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _migrate_ingest(database_url: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("gridloop-ingest")),
        "migrate",
        env={
            **{key: value for key, value in os.environ.items() if not key.startswith("GRIDLOOP_")},
            "GRIDLOOP_DATABASE_URL": database_url,
            "GRIDLOOP_JWT_SECRET": "test-secret-with-at-least-thirty-two-characters",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()[-2000:]


class Changes:
    """Counts change notices and lets a test await the next one."""

    def __init__(self) -> None:
        self.count = 0
        self._arrived = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._arrived.set()

    async def next(self, *, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._arrived.wait(), timeout_s)
        self._arrived.clear()


async def _backend_pids(connection: asyncpg.Connection, application_name: str) -> list[int]:
    rows = await connection.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        application_name,
    )
    return [row["pid"] for row in rows]


async def test_notices_arrive_and_a_dropped_listen_connection_is_replaced(database_url: str) -> None:
    application_name = f"registry-test-{uuid.uuid4().hex[:8]}"
    changes = Changes()
    listener = asyncio.create_task(
        listen_for_registry_changes(database_url, changes, application_name=application_name)
    )
    connection = await asyncpg.connect(database_url)
    try:
        await changes.next()  # connected: counts as a change, whatever happened before it
        await connection.execute("SELECT pg_notify($1, 'INSERT')", REGISTRY_CHANNEL)
        await changes.next()

        (pid,) = await _backend_pids(connection, application_name)
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
        await changes.next()  # reconnected: notices sent meanwhile are lost, so it asks for a re-read
        (new_pid,) = await _backend_pids(connection, application_name)
        assert new_pid != pid
        before = changes.count
        await connection.execute("SELECT pg_notify($1, 'UPDATE')", REGISTRY_CHANNEL)
        await changes.next()
        assert changes.count == before + 1
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await connection.close()


async def test_a_registry_created_after_the_agent_started_is_read_within_a_second_or_two(
    empty_database_url: str, amqp_url: str
) -> None:
    async with (
        open_pool(empty_database_url, min_size=1, max_size=2) as pool,
        ModbusBus(timeout_s=1.0) as bus,
        open_broker(AmqpSettings(amqp_url=amqp_url), client_name="test-fleet") as broker,  # type: ignore[arg-type]
    ):
        fleet = Fleet(
            pool=pool, bus=bus, publisher=broker.publisher, revert_timeout_s=60, refresh_interval_s=LONG_PERIOD_S
        )
        running = asyncio.create_task(fleet.run_forever())
        try:
            assert not fleet.loaded.is_set()
            await _migrate_ingest(empty_database_url)
            # No LISTEN here: only the missing-registry retry (0.5 s doubling) can find it this soon.
            await asyncio.wait_for(fleet.loaded.wait(), 10)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def test_an_unknown_device_is_waited_for_briefly_and_never_past_the_action_validity() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert unknown_device_wait_s(now, None, now=now) == UNKNOWN_DEVICE_WAIT_S
    assert unknown_device_wait_s(now, now + timedelta(hours=1), now=now) == UNKNOWN_DEVICE_WAIT_S
    assert unknown_device_wait_s(now, now + timedelta(seconds=3), now=now) == 3.0
    assert unknown_device_wait_s(now, now - timedelta(seconds=3), now=now) == 0.0
    # Counted from the action's issue: an action issued 7 s ago waits 3 s more, one issued a minute ago not at all,
    # so a backlog of old actions for devices that never come cannot hold the consumer.
    assert unknown_device_wait_s(now - timedelta(seconds=7), None, now=now) == 3.0
    assert unknown_device_wait_s(now - timedelta(minutes=1), now + timedelta(hours=1), now=now) == 0.0
