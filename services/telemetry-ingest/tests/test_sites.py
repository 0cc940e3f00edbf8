"""flux.mg_sites: each site's time zone and grid limits, served by the Flux API. The database refuses a bad row from
any writer naming the field (the REST API answers 400), with the same rules as gridloop_common's SiteParameters."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from gridloop_common.contracts import InvalidSiteParameters, SiteParameters

from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url
from .api_fixtures import headers_for, key

pytestmark = pytest.mark.connected

SERVICE = headers_for(key("service_role"))
AUTHENTICATED = headers_for(key("authenticated"))
ANON = headers_for(key("anon"))

# (row, the field the contract names, or None when the row obeys it)
EXAMPLES: list[tuple[dict[str, Any], str | None]] = [
    ({}, None),
    ({"timezone": "America/Toronto", "import_limit_kw": 25.0, "export_limit_kw": 0.0}, None),
    ({"timezone": "Europe/Paris", "site_meter": "meter-1", "metadata": {"feeder": "F12"}}, None),
    ({"timezone": "Etc/GMT+5"}, None),
    ({"timezone": "UTC", "import_limit_kw": None}, None),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"timezone": "america/toronto"}, "timezone"),  # the zone database is case-sensitive; so is zoneinfo
    ({"timezone": "EST5EDT,M3.2.0,M11.1.0"}, "timezone"),  # a POSIX rule, not a zone name
    ({"timezone": "posix/Europe/Paris"}, "timezone"),
    ({"timezone": "posixrules"}, "timezone"),
    ({"timezone": ""}, "timezone"),
    ({"import_limit_kw": -1.0}, "import_limit_kw"),
    ({"import_limit_kw": float("nan")}, "import_limit_kw"),
    ({"export_limit_kw": float("inf")}, "export_limit_kw"),
    ({"export_limit_kw": -0.5}, "export_limit_kw"),
    ({"site_meter": ""}, "site_meter"),
    ({"metadata": [1, 2]}, "metadata"),
]


def _contract_field(row: dict[str, Any]) -> str | None:
    try:
        SiteParameters.from_row(row)
    except InvalidSiteParameters as error:
        return error.field
    return None


async def _database_field(pool: asyncpg.Pool, row: dict[str, Any]) -> str | None:
    columns = ["name", *row]
    placeholders = ", ".join(f"${index}" for index in range(1, len(columns) + 1))
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute(
                f"INSERT INTO flux.mg_sites ({', '.join(columns)}) VALUES ({placeholders})",
                f"site-{uuid.uuid4().hex[:8]}",
                *row.values(),
            )
        except asyncpg.CheckViolationError as error:
            return str(error).split(":", 1)[0]
        finally:
            await transaction.rollback()
    return None


@pytest.mark.parametrize(("row", "field"), EXAMPLES, ids=[str(row) for row, _ in EXAMPLES])
async def test_the_database_and_the_contract_agree_on_each_row(
    pool: asyncpg.Pool, row: dict[str, Any], field: str | None
) -> None:
    named = {"name": "agreement", **row}

    assert _contract_field(named) == field
    assert await _database_field(pool, row) == field


async def test_a_site_written_by_service_role_is_read_by_each_role_as_its_privileges_allow(api_url: str) -> None:
    name = f"site-{uuid.uuid4().hex[:8]}"
    site = {
        "name": name,
        "timezone": "America/Toronto",
        "import_limit_kw": 40,
        "export_limit_kw": 10,
        "site_meter": "meter-1",
        "metadata": {"feeder": "F12"},
    }
    async with httpx.AsyncClient(base_url=api_url) as client:
        created = await client.post("/rest/v1/mg_sites", json=site, headers=SERVICE)
        by_operator = await client.get("/rest/v1/mg_sites", params={"name": f"eq.{name}"}, headers=AUTHENTICATED)
        public = await client.get(
            "/rest/v1/mg_sites",
            params={"name": f"eq.{name}", "select": "name,timezone,import_limit_kw,export_limit_kw"},
            headers=ANON,
        )
        public_metadata = await client.get(
            "/rest/v1/mg_sites", params={"name": f"eq.{name}", "select": "metadata"}, headers=ANON
        )
        written_by_authenticated = await client.post(
            "/rest/v1/mg_sites", json={"name": f"{name}-2"}, headers=AUTHENTICATED
        )

    assert created.status_code == 201, created.text
    [row] = by_operator.json()
    assert {key: row[key] for key in site} == site
    assert row["created_at"] == row["updated_at"]
    assert public.json() == [
        {"name": name, "timezone": "America/Toronto", "import_limit_kw": 40, "export_limit_kw": 10}
    ]
    assert public_metadata.status_code == 401  # anon may not read metadata (42501)
    assert written_by_authenticated.status_code == 403


@pytest.mark.parametrize(
    ("site", "field"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "Europe/Paris", "import_limit_kw": -5}, "import_limit_kw"),
        ({"export_limit_kw": "NaN"}, "export_limit_kw"),
    ],
    ids=["timezone", "negative-import", "nan-export"],
)
async def test_a_bad_site_is_refused_with_400_naming_the_field(api_url: str, site: dict[str, Any], field: str) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        response = await client.post("/rest/v1/mg_sites", json={"name": name, **site})
        stored = await client.get("/rest/v1/mg_sites", params={"name": f"eq.{name}"})

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "23514"
    assert body["message"].startswith(f"{field}: ")
    assert stored.json() == []


async def test_bulk_upsert_and_patch_with_a_bad_row_change_nothing(api_url: str) -> None:
    good, other = f"good-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api_url, headers=SERVICE) as client:
        created = await client.post("/rest/v1/mg_sites", json={"name": good, "timezone": "Europe/Paris"})
        assert created.status_code == 201, created.text
        bulk = await client.post(
            "/rest/v1/mg_sites",
            json=[{"name": other, "timezone": "Asia/Tokyo"}, {"name": f"{other}-2", "timezone": "Asia/Tokio"}],
        )
        upsert = await client.post(
            "/rest/v1/mg_sites",
            params={"on_conflict": "name"},
            headers={"Prefer": "resolution=merge-duplicates"},
            json={"name": good, "timezone": "Europe/Pariss"},
        )
        patched = await client.patch("/rest/v1/mg_sites", params={"name": f"eq.{good}"}, json={"import_limit_kw": -1})
        rows = await client.get("/rest/v1/mg_sites", params={"name": f"in.({good},{other})", "select": "name,timezone"})

    assert (bulk.status_code, bulk.json()["message"].split(":")[0]) == (400, "timezone")
    assert f"Site {other}-2" in bulk.json()["details"]
    assert (upsert.status_code, upsert.json()["message"].split(":")[0]) == (400, "timezone")
    assert (patched.status_code, patched.json()["message"].split(":")[0]) == (400, "import_limit_kw")
    assert rows.json() == [{"name": good, "timezone": "Europe/Paris"}]


async def test_an_update_moves_updated_at_and_keeps_created_at(pool: asyncpg.Pool) -> None:
    name = f"site-{uuid.uuid4().hex[:8]}"
    created = await pool.fetchrow(
        "INSERT INTO flux.mg_sites (name, timezone) VALUES ($1, 'Europe/Paris') RETURNING created_at, updated_at", name
    )
    # now() is the transaction's start, so the update, in a later transaction, is stamped later.
    updated = await pool.fetchrow(
        "UPDATE flux.mg_sites SET import_limit_kw = 12 WHERE name = $1 RETURNING created_at, updated_at", name
    )

    assert updated["created_at"] == created["created_at"]
    assert updated["updated_at"] > created["updated_at"]


async def test_registry_sites_need_no_row_and_keep_working(pool: asyncpg.Pool) -> None:
    """A device's site with no mg_sites row is still registered; readers apply SiteParameters.defaults."""
    device, site = f"battery-{uuid.uuid4().hex[:8]}", f"undescribed-{uuid.uuid4().hex[:8]}"

    await pool.execute("INSERT INTO flux.mg_device_registry (name, type, site) VALUES ($1, 'bess', $2)", device, site)

    assert await pool.fetchval("SELECT count(*) FROM flux.mg_sites WHERE name = $1", site) == 0
    assert SiteParameters.defaults(site).model_dump() == {
        "name": site,
        "timezone": "UTC",
        "import_limit_kw": None,
        "export_limit_kw": None,
        "site_meter": None,
        "metadata": None,
        "described": False,
    }
