"""Fixtures of the telemetry upload tests: a private flux database, a running upstream simulator, an uploader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from uuid import UUID

import asyncpg
import httpx
import pytest

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from gridloop_common.testing import FakeClock
from gridloop_simulators.upstream import UpstreamSimulator
from telemetry_ingest.upload.uploader import TelemetryUploader

__all__ = [
    "TOKEN",
    "RecordingClock",
    "insert_readings",
    "register_battery",
    "upload_database_url_fixture",
    "upload_pool_fixture",
    "uploader_fixture",
    "upstream_client_fixture",
    "upstream_fixture",
]

TOKEN = "telemetry-upload-test-token"


@pytest.fixture(scope="session", name="upload_database_url")
def upload_database_url_fixture(database_url: str) -> Iterator[str]:
    """A database of its own beside the session's: the uploader reads every battery in the registry, and
    other suites register batteries in the session database."""
    server, _, name = database_url.rpartition("/")
    private = f"{name}_upload"

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(f"{server}/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{private}"'))
    try:
        yield f"{server}/{private}"
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{private}" WITH (FORCE)'))


@pytest.fixture(name="upload_pool")
async def upload_pool_fixture(upload_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the private database, migrated, with no devices, readings or upload progress."""
    async with open_pool(upload_database_url, min_size=1, max_size=4) as pool:
        await apply_migrations(pool, owner="telemetry-ingest", migrations=load_migrations("telemetry_ingest"))
        await pool.execute(
            "TRUNCATE flux.mg_device_registry, flux.mg_bess_readings, "
            "ingest.telemetry_upload_marks, ingest.telemetry_upload_retries"
        )
        yield pool


@pytest.fixture(name="upstream")
async def upstream_fixture() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(token=TOKEN) as simulator:
        yield simulator


@pytest.fixture(name="upstream_client")
async def upstream_client_fixture(upstream: UpstreamSimulator) -> AsyncIterator[httpx.AsyncClient]:
    """The client the service would build: base_url and the bearer token."""
    async with httpx.AsyncClient(
        base_url=upstream.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
    ) as client:
        yield client


@pytest.fixture(name="uploader")
def uploader_fixture(upload_pool: asyncpg.Pool, upstream_client: httpx.AsyncClient) -> TelemetryUploader:
    return TelemetryUploader(pool=upload_pool, client=upstream_client, interval_s=60.0)


class RecordingClock(FakeClock):
    """A FakeClock that remembers every sleep and signals it, so a test can await the uploader going idle."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []
        self.asleep = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.asleep.set()
        await super().sleep(seconds)

    async def next_sleep(self, timeout_s: float = 10.0) -> float:
        """Wait until the next sleep starts and return its length."""
        await asyncio.wait_for(self.asleep.wait(), timeout_s)
        self.asleep.clear()
        return self.sleeps[-1]


async def register_battery(
    pool: asyncpg.Pool, name: str, *, capacity_kwh: float | None = 10.0, site: str = "TEST"
) -> UUID:
    metadata = {} if capacity_kwh is None else {"capacity_kwh": capacity_kwh, "max_power_kw": 5}
    device_id: UUID = await pool.fetchval(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', $2, $3) RETURNING id",
        name,
        site,
        metadata,
    )
    return device_id


async def insert_readings(
    pool: asyncpg.Pool, device_id: UUID, readings: Sequence[tuple[datetime, float, float]]
) -> None:
    """Insert ``(time, soe percent, target_power kW)`` rows, as telemetry-ingest would."""
    await pool.executemany(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES ($1, $2, $3, $4)",
        [(time, device_id, soe, power) for time, soe, power in readings],
    )
