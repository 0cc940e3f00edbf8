"""One list of device types: the registry refuses any type outside DeviceType, and migration 0016 renames
the legacy battery spellings that services used to disagree on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from gridloop_common.contracts import DeviceType
from gridloop_common.db import apply_migrations, load_migrations, open_pool
from gridloop_simulators.upstream import UpstreamSimulator
from telemetry_ingest.upload import TelemetryUploader

from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url
from .api_fixtures import headers_for, key

pytestmark = pytest.mark.connected

SERVICE = headers_for(key("service_role"))
OWNER = "telemetry-ingest"
TOKEN = "device-types-test-token"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


async def _registered(api_url: str, name: str) -> list[dict[str, str]]:
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        response = await client.get("/rest/v1/mg_device_registry", params={"name": f"eq.{name}", "select": "type"})
    response.raise_for_status()
    rows: list[dict[str, str]] = response.json()
    return rows


@pytest.mark.parametrize("device_type", ["battery", "storage", "BESS", "electric_storage", "inverter"])
async def test_registering_a_device_of_an_unknown_type_is_refused_naming_the_field(
    api_url: str, device_type: str
) -> None:
    name = f"typed-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        response = await client.post(
            "/rest/v1/mg_device_registry", json={"name": name, "type": device_type, "site": "WLCE"}
        )

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "23514"
    assert "mg_device_registry_type_check" in body["message"]  # the constraint on the column "type"
    assert await _registered(api_url, name) == []


async def test_every_device_type_of_the_contract_is_accepted_and_a_change_to_an_unknown_one_refused(
    api_url: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        for device_type in DeviceType:
            response = await client.post(
                "/rest/v1/mg_device_registry",
                json={"name": f"{device_type}-{suffix}", "type": device_type.value, "site": "WLCE"},
            )
            assert response.status_code == 201, response.text

        changed = await client.patch(
            "/rest/v1/mg_device_registry", params={"name": f"eq.bess-{suffix}"}, json={"type": "battery"}
        )

    assert changed.status_code == 400 and changed.json()["code"] == "23514"
    assert await _registered(api_url, f"bess-{suffix}") == [{"type": "bess"}]


@pytest.fixture(name="unmigrated_database_url")
def unmigrated_database_url_fixture(database_url: str) -> Iterator[str]:
    """An empty database of its own: the test migrates it step by step."""
    server, _, name = database_url.rpartition("/")
    private = f"{name}_types_{uuid.uuid4().hex[:6]}"

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


async def test_the_migration_renames_legacy_spellings_and_the_uploader_then_reports_the_battery(
    unmigrated_database_url: str,
) -> None:
    migrations = load_migrations("telemetry_ingest")
    [types_migration] = [migration for migration in migrations if migration.name == "device_types"]
    before = migrations[: migrations.index(types_migration)]
    async with open_pool(unmigrated_database_url, min_size=1, max_size=2) as pool:
        await apply_migrations(pool, owner=OWNER, migrations=before)
        await pool.executemany(
            "INSERT INTO flux.mg_device_registry (name, type, site) VALUES ($1, $2, 'TEST')",
            [("one", "battery"), ("two", "Storage"), ("three", "BESS"), ("four", "METER"), ("five", "meter")],
        )
        await pool.execute("UPDATE flux.mg_device_registry SET metadata = '{\"capacity_kwh\": 10}' WHERE name = 'one'")
        one = await pool.fetchval("SELECT id FROM flux.mg_device_registry WHERE name = 'one'")
        await pool.execute(
            "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES ($1, $2, 50, 1.5)", NOW, one
        )

        await apply_migrations(pool, owner=OWNER, migrations=migrations)

        rows = await pool.fetch("SELECT name, type FROM flux.mg_device_registry")
        assert {row["name"]: row["type"] for row in rows} == {
            "one": "bess",
            "two": "bess",
            "three": "bess",
            "four": "meter",
            "five": "meter",
        }
        validated = await pool.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'mg_device_registry_type_check'"
        )
        assert validated is True

        # The battery once spelled 'battery' was driven by the agent but never uploaded; now it is reported.
        async with (
            UpstreamSimulator(token=TOKEN) as upstream,
            httpx.AsyncClient(base_url=upstream.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
        ):
            await TelemetryUploader(pool=pool, client=client).upload_once(NOW + timedelta(seconds=1))
        reported = {(point["device_id"], point["last_is_online"]) for point in upstream.accepted_telemetry}
        assert ("one", True) in reported
