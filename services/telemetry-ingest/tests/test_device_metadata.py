"""Registry metadata obeys gridloop_common's DeviceMetadata: the database refuses a bad document from any writer
(the REST API answers 400 naming the field), with the same rules as the contract the services read it with."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from gridloop_common.contracts import DeviceMetadata, InvalidDeviceMetadata
from gridloop_common.db import apply_migrations, load_migrations, open_pool

from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url
from .api_fixtures import headers_for, key

pytestmark = pytest.mark.connected

SERVICE = headers_for(key("service_role"))
OWNER = "telemetry-ingest"

# (document as JSON text, the field the contract names, or None when the document obeys it)
EXAMPLES: list[tuple[str, str | None]] = [
    ("null", None),
    ("{}", None),
    ('{"capacity_kwh": 13.5, "max_power_kw": 5, "modbus": {"host": "10.0.0.5", "port": 502, "unit_id": 1}}', None),
    ('{"modbus": {"host": "h", "profile": "sunspec", "future": [1]}, "ocpp": {"id": "cp-1"}}', None),
    ('{"max_power_kw": 0.5, "backup_reserve_percentage": 0, "state_of_health_percentage": 100}', None),
    ('{"max_power_kw": null, "site_meter": "meter-1", "ac_power_sign": -1}', None),
    ('{"max_power": 100, "capacity_kwh": 500, "modbus_address": 1}', None),  # Flux's example (design.md §4)
    ('{"max_power_kw": 0}', "metadata.max_power_kw"),
    ('{"max_power_kw": true}', "metadata.max_power_kw"),
    ('{"max_power_kw": "5"}', "metadata.max_power_kw"),
    ('{"max_power_kw": -3}', "metadata.max_power_kw"),
    ('{"capacity_kwh": 0}', "metadata.capacity_kwh"),
    ('{"capacity_kwh": false}', "metadata.capacity_kwh"),
    ('{"backup_reserve_percentage": 101}', "metadata.backup_reserve_percentage"),
    ('{"backup_reserve_percentage": -1}', "metadata.backup_reserve_percentage"),
    ('{"state_of_health_percentage": 0}', "metadata.state_of_health_percentage"),
    ('{"site_meter": ""}', "metadata.site_meter"),
    ('{"site_meter": 7}', "metadata.site_meter"),
    ('{"ac_power_sign": 2}', "metadata.ac_power_sign"),
    ('{"ac_power_sign": true}', "metadata.ac_power_sign"),
    ('{"ac_power_sign": -1.0}', "metadata.ac_power_sign"),
    ('{"ac_power_sign": null}', "metadata.ac_power_sign"),
    ('{"modbus": "10.0.0.5"}', "metadata.modbus"),
    ('{"modbus": {"port": 502}}', "metadata.modbus.host"),
    ('{"modbus": {"host": ""}}', "metadata.modbus.host"),
    ('{"modbus": {"host": "h", "port": 0}}', "metadata.modbus.port"),
    ('{"modbus": {"host": "h", "port": 70000}}', "metadata.modbus.port"),
    ('{"modbus": {"host": "h", "port": "502"}}', "metadata.modbus.port"),
    ('{"modbus": {"host": "h", "port": 502.0}}', "metadata.modbus.port"),
    ('{"modbus": {"host": "h", "port": null}}', "metadata.modbus.port"),
    ('{"modbus": {"host": "h", "unit_id": 256}}', "metadata.modbus.unit_id"),
    ('{"modbus": {"host": "h", "unit_id": true}}', "metadata.modbus.unit_id"),
    ('{"modbus": {"host": "h", "profile": 1}}', "metadata.modbus.profile"),
    ('{"modbus": {"host": "h", "port": 0}, "max_power_kw": 0}', "metadata.modbus.port"),  # the first, in order
    ('{"ocpp": {"id": "cp-1", "version": "2.1", "password_sha256": "' + "a" * 64 + '"}}', None),
    ('{"ocpp": {"id": "cp-1", "version": "ocpp1.6"}}', "metadata.ocpp.version"),
    ('{"ocpp": {"id": "cp-1", "version": null, "password_sha256": null}}', None),
    ('{"ocpp": "cp-1"}', "metadata.ocpp"),
    ('{"ocpp": {"version": "1.6"}}', "metadata.ocpp.id"),
    ('{"ocpp": {"id": ""}}', "metadata.ocpp.id"),
    ('{"ocpp": {"id": 7}}', "metadata.ocpp.id"),
    ('{"ocpp": {"id": "' + "c" * 49 + '"}}', "metadata.ocpp.id"),
    ('{"ocpp": {"id": "cp-1", "version": "1.5"}}', "metadata.ocpp.version"),
    ('{"ocpp": {"id": "cp-1", "version": 1.6}}', "metadata.ocpp.version"),
    ('{"ocpp": {"id": "cp-1", "password_sha256": "secret"}}', "metadata.ocpp.password_sha256"),
    ('{"ocpp": {"id": "cp-1", "password_sha256": "' + "A" * 64 + '"}}', "metadata.ocpp.password_sha256"),
    ('{"ocpp": {"id": "cp-1", "version": "x"}, "max_power_kw": 0}', "metadata.ocpp.version"),
    ('{"phases": 1, "min_current_a": 6}', None),
    ('{"phases": null, "min_current_a": 6.5}', None),
    ('{"phases": 2}', "metadata.phases"),
    ('{"phases": 3.0}', "metadata.phases"),
    ('{"phases": "3"}', "metadata.phases"),
    ('{"min_current_a": 0}', "metadata.min_current_a"),
    ('{"min_current_a": true}', "metadata.min_current_a"),
    ('{"ac_power_sign": 2, "phases": "3"}', "metadata.ac_power_sign"),
    ('{"ev": {"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 80}}', None),
    ('{"ev": {"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 80, "arrival": null}}', None),
    (
        '{"ev": {"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 80, "arrival": "18:00",'
        ' "initial_soc_pct": 35.5}}',
        None,
    ),
    ('{"ev": "car"}', "metadata.ev"),
    ('{"ev": {"departure": "07:30", "target_soc_pct": 80}}', "metadata.ev.capacity_kwh"),
    ('{"ev": {"capacity_kwh": 0, "departure": "07:30", "target_soc_pct": 80}}', "metadata.ev.capacity_kwh"),
    ('{"ev": {"capacity_kwh": null, "departure": "07:30", "target_soc_pct": 80}}', "metadata.ev.capacity_kwh"),
    ('{"ev": {"capacity_kwh": 60, "target_soc_pct": 80}}', "metadata.ev.departure"),
    ('{"ev": {"capacity_kwh": 60, "departure": "7:30", "target_soc_pct": 80}}', "metadata.ev.departure"),
    ('{"ev": {"capacity_kwh": 60, "departure": "24:00", "target_soc_pct": 80}}', "metadata.ev.departure"),
    ('{"ev": {"capacity_kwh": 60, "departure": 730, "target_soc_pct": 80}}', "metadata.ev.departure"),
    ('{"ev": {"capacity_kwh": 60, "departure": "07:30"}}', "metadata.ev.target_soc_pct"),
    ('{"ev": {"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 101}}', "metadata.ev.target_soc_pct"),
    (
        '{"ev": {"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 80, "arrival": "noon"}}',
        "metadata.ev.arrival",
    ),
    (
        '{"ev": {"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 80, "initial_soc_pct": -1}}',
        "metadata.ev.initial_soc_pct",
    ),
    ('{"ev": {"capacity_kwh": "60", "departure": "x"}, "phases": 2}', "metadata.phases"),  # the first, in order
    ("[1, 2]", "metadata"),
    ('"text"', "metadata"),
]


def _contract_field(document: Any) -> str | None:
    try:
        DeviceMetadata.from_registry(document)
    except InvalidDeviceMetadata as error:
        return error.field
    return None


@pytest.mark.parametrize(("document", "field"), EXAMPLES, ids=[document for document, _ in EXAMPLES])
async def test_the_database_and_the_contract_agree_on_each_document(
    pool: asyncpg.Pool, document: str, field: str | None
) -> None:
    # The services read the document as PostgreSQL returns it (jsonb normalised), so the contract sees that.
    stored, problem = await pool.fetchrow(
        "SELECT $1::text::jsonb AS stored, flux.device_metadata_problem($1::text::jsonb) AS problem", document
    )

    assert _contract_field(stored) == field
    assert (problem.split(":", 1)[0] if problem else None) == field


async def _registered(api_url: str, name: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        response = await client.get("/rest/v1/mg_device_registry", params={"name": f"eq.{name}", "select": "metadata"})
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()
    return rows


@pytest.mark.parametrize("bad", [0, True], ids=["zero", "true"])
async def test_registering_a_device_with_a_bad_power_limit_is_refused_naming_the_field(api_url: str, bad: Any) -> None:
    name = f"limited-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        response = await client.post(
            "/rest/v1/mg_device_registry",
            json={"name": name, "type": "bess", "site": "WLCE", "metadata": {"max_power_kw": bad}},
        )

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "23514"
    assert body["message"].startswith("metadata.max_power_kw: ")
    assert await _registered(api_url, name) == []


async def test_bulk_insert_upsert_and_patch_with_bad_metadata_change_nothing(api_url: str) -> None:
    good, other = f"good-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    valid = {"max_power_kw": 5, "modbus": {"host": "10.0.0.5"}}
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        created = await client.post(
            "/rest/v1/mg_device_registry", json={"name": good, "type": "bess", "site": "WLCE", "metadata": valid}
        )
        assert created.status_code == 201, created.text

        bulk = await client.post(
            "/rest/v1/mg_device_registry",
            json=[
                {"name": other, "type": "bess", "site": "WLCE", "metadata": valid},
                {"name": f"{other}-2", "type": "bess", "site": "WLCE", "metadata": {"capacity_kwh": 0}},
            ],
        )
        upsert = await client.post(
            "/rest/v1/mg_device_registry",
            params={"on_conflict": "name"},
            headers={"Prefer": "resolution=merge-duplicates"},
            json={"name": good, "type": "bess", "site": "WLCE", "metadata": {"modbus": {"host": "h", "port": 0}}},
        )
        patched = await client.patch(
            "/rest/v1/mg_device_registry",
            params={"name": f"eq.{good}"},
            json={"metadata": {"backup_reserve_percentage": 120}},
        )

    assert (bulk.status_code, bulk.json()["message"].split(":")[0]) == (400, "metadata.capacity_kwh")
    assert (upsert.status_code, upsert.json()["message"].split(":")[0]) == (400, "metadata.modbus.port")
    assert (patched.status_code, patched.json()["message"].split(":")[0]) == (400, "metadata.backup_reserve_percentage")
    assert await _registered(api_url, good) == [{"metadata": valid}]
    assert await _registered(api_url, other) == []


@pytest.fixture(name="unmigrated_database_url")
def unmigrated_database_url_fixture(database_url: str) -> Iterator[str]:
    """An empty database of its own: the test migrates it step by step."""
    server, _, name = database_url.rpartition("/")
    private = f"{name}_metadata_{uuid.uuid4().hex[:6]}"

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


async def test_rows_written_before_the_migration_stay_and_can_still_be_deactivated(
    unmigrated_database_url: str,
) -> None:
    migrations = load_migrations("telemetry_ingest")
    [contract] = [migration for migration in migrations if migration.name == "trigger.flux.metadata_contract"]
    async with open_pool(unmigrated_database_url, min_size=1, max_size=2) as pool:
        await apply_migrations(pool, owner=OWNER, migrations=[other for other in migrations if other != contract])
        await pool.execute(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ('old', 'bess', 'T', $1)",
            {"max_power_kw": True},
        )

        applied = await apply_migrations(pool, owner=OWNER, migrations=migrations)

        assert [migration.name for migration in applied] == ["trigger.flux.metadata_contract"]
        await pool.execute("UPDATE flux.mg_device_registry SET active = false WHERE name = 'old'")
        row = await pool.fetchrow("SELECT active, metadata FROM flux.mg_device_registry WHERE name = 'old'")
        assert (row["active"], row["metadata"]) == (False, {"max_power_kw": True})
        with pytest.raises(asyncpg.CheckViolationError, match=r"^metadata\.max_power_kw: "):
            await pool.execute(
                "UPDATE flux.mg_device_registry SET metadata = $1 WHERE name = 'old'", json.loads('{"max_power_kw": 0}')
            )
