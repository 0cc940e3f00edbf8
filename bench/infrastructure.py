"""A private RabbitMQ vhost and PostgreSQL database for one benchmark run, removed at the end."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Mapping

import asyncpg

__all__ = ["SERVER", "Infrastructure"]

SERVER = "postgresql://postgres@127.0.0.1:5432"


class Infrastructure:
    """``async with Infrastructure(defaults) as run:``; ``run.environment(**extra)`` for child processes."""

    def __init__(self, defaults: Mapping[str, str] | None = None) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.vhost = f"gridloop-bench-{suffix}"
        self.database = f"gridloop_bench_{suffix}"
        self._defaults = dict(defaults or {})

    async def __aenter__(self) -> Infrastructure:
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.vhost], check=True, capture_output=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        connection = await asyncpg.connect(f"{SERVER}/postgres")
        await connection.execute(f'CREATE DATABASE "{self.database}"')
        await connection.close()
        return self

    async def __aexit__(self, *_: object) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], check=False, capture_output=True)
        connection = await asyncpg.connect(f"{SERVER}/postgres")
        await connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        await connection.close()

    @property
    def database_url(self) -> str:
        return f"{SERVER}/{self.database}"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def environment(self, **extra: str) -> dict[str, str]:
        """The process environment without any GRIDLOOP_ setting of the caller's, pointed at this run."""
        environment = {key: value for key, value in os.environ.items() if not key.startswith("GRIDLOOP_")}
        environment.update(
            GRIDLOOP_AMQP_URL=self.amqp_url,
            GRIDLOOP_DATABASE_URL=self.database_url,
            GRIDLOOP_LOG_LEVEL="WARNING",
            **self._defaults,
            **extra,
        )
        return environment
