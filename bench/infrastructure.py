"""A private RabbitMQ vhost and PostgreSQL database for one benchmark run, removed at the end.

``PrivateServer`` starts a PostgreSQL server of the run's own, for runs that need server settings the
machine's server does not have (a bigger shared_buffers): initdb into a temporary directory, started on a
free loopback port, stopped and removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

import asyncpg

__all__ = ["SERVER", "Infrastructure", "PrivateServer", "free_port"]

SERVER = "postgresql://postgres@127.0.0.1:5432"

# Settings the private server takes over from the machine's, so that only what the run asks for differs.
COPIED_SETTINGS = (
    "autovacuum",
    "checkpoint_timeout",
    "max_wal_size",
    "min_wal_size",
    "synchronous_commit",
    "wal_level",
    "work_mem",
    "maintenance_work_mem",
    "max_connections",
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateServer:
    """``async with PrivateServer({"shared_buffers": "8GB"}) as server:``; ``server.url`` to connect."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._settings = dict(settings)
        self._directory: Path | None = None
        self._binaries = Path()
        self.port = 0
        self.applied: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    async def __aenter__(self) -> PrivateServer:
        machine = await asyncpg.connect(f"{SERVER}/postgres")
        try:
            major = int(await machine.fetchval("SHOW server_version_num")) // 10000
            rows = await machine.fetch(
                "SELECT name, current_setting(name) AS value FROM pg_settings WHERE name = ANY($1::text[])",
                list(COPIED_SETTINGS),
            )
        finally:
            await machine.close()
        binaries = self._binaries = Path(f"/usr/lib/postgresql/{major}/bin")
        self.applied = {row["name"]: row["value"] for row in rows} | self._settings
        self._directory = Path(tempfile.mkdtemp(prefix="gridloop-bench-postgres-", dir="/var/tmp"))
        data = self._directory / "data"
        self.port = free_port()
        options = {
            **self.applied,
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self._directory),
        }
        as_postgres = _as_postgres_user(self._directory)
        await asyncio.to_thread(
            subprocess.run,
            [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            **as_postgres,
        )
        # The caller may have pinned itself to one core (bench/telemetry.py does); the server takes them all.
        every_core = ["taskset", "--cpu-list", f"0-{(os.cpu_count() or 1) - 1}"]
        await asyncio.to_thread(
            subprocess.run,
            [
                *every_core,
                str(binaries / "pg_ctl"),
                "start",
                "-w",
                "-D",
                str(data),
                "-l",
                str(self._directory / "server.log"),
                "-o",
                " ".join(f"-c {name}={value}" for name, value in options.items()),
            ],
            check=True,
            capture_output=True,
            **as_postgres,
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._directory is None:
            return
        await asyncio.to_thread(
            subprocess.run,
            [str(self._binaries / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self._directory / "data")],
            check=False,
            capture_output=True,
            **_as_postgres_user(self._directory),
        )
        shutil.rmtree(self._directory, ignore_errors=True)


def _as_postgres_user(directory: Path) -> dict[str, str]:
    """initdb refuses to run as root: as root, the server runs as the postgres user and owns its directory."""
    if os.geteuid() != 0:
        return {}
    shutil.chown(directory, user="postgres", group="postgres")
    return {"user": "postgres"}


class Infrastructure:
    """``async with Infrastructure(defaults) as run:``; ``run.environment(**extra)`` for child processes."""

    def __init__(self, defaults: Mapping[str, str] | None = None, *, server: str = SERVER) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.server = server
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
        connection = await asyncpg.connect(f"{self.server}/postgres")
        await connection.execute(f'CREATE DATABASE "{self.database}"')
        await connection.close()
        return self

    async def __aexit__(self, *_: object) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], check=False, capture_output=True)
        connection = await asyncpg.connect(f"{self.server}/postgres")
        await connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        await connection.close()

    @property
    def database_url(self) -> str:
        return f"{self.server}/{self.database}"

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
