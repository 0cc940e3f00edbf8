"""One list of device types: the registry refuses any type outside DeviceType, the spellings of a battery that
services used to disagree on ('battery', 'storage') included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from gridloop_common.contracts import DeviceType

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


async def test_the_type_constraint_is_validated_for_every_row(pool: asyncpg.Pool) -> None:
    validated = await pool.fetchval(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'mg_device_registry_type_check'"
    )
    assert validated is True
