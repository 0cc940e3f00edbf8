"""Test infrastructure shared by every test suite: a private RabbitMQ vhost and PostgreSQL database.

Tests talk to the real broker and database on 127.0.0.1. Each pytest session gets its own vhost and
database, so tests never see a running stack's queues or rows, and both are removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

BROKER_HOST = os.environ.get("GRIDLOOP_TEST_AMQP_HOST", "127.0.0.1:5672")
POSTGRES_SERVER = os.environ.get("GRIDLOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _rabbitmqctl(*arguments: str) -> None:
    executable = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([executable, "-q", *arguments], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """An AMQP URL on a fresh vhost of the local broker."""
    vhost = f"gridloop-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{BROKER_HOST}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A PostgreSQL URL of a fresh, empty database."""
    name = f"gridloop_test_{uuid.uuid4().hex[:10]}"

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(f"{POSTGRES_SERVER}/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
