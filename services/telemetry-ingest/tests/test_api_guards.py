"""What the Flux API refuses before (or instead of) running SQL: privileges, sizes, filters, bad numbers, NUL
bytes, and how a statement timeout is reported. Over real HTTP and PostgreSQL (issue 14: C1, L6, H1, L5, L1, M4).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gridloop_common.observability import Health
from telemetry_ingest.api.postgrest import (
    Catalogue,
    Column,
    InsertQuery,
    PostgrestError,
    Privileges,
    Relation,
    compile_query,
    parse_request,
)
from telemetry_ingest.api.postgrest.privileges import check_privileges
from telemetry_ingest.api.routes import build_app
from telemetry_ingest.settings import IngestSettings

from .api_fixtures import SECRET, headers_for, key
from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url

pytestmark = pytest.mark.connected

SERVICE = key("service_role")
AUTHENTICATED = key("authenticated", sub=str(uuid.uuid4()))
ANON = key("anon")
# Eleven columns: 2,000 rows can each carry a different subset of them.
METER_COLUMNS = (
    "frequency",
    "voltage_line_average",
    "current_phase_a",
    "current_phase_b",
    "current_phase_c",
    "power_total_active",
    "power_total_reactive",
    "power_total_apparent",
    "power_factor_total",
    "energy_imported_active",
    "energy_exported_active",
)


async def call(
    url: str, method: str, path: str, *, token: str = SERVICE, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await client.request(
            method,
            path,
            headers={**headers_for(token), **(headers or {})},
            content=None if body is None else json.dumps(body).encode(),
        )


@contextlib.asynccontextmanager
async def served(pool: asyncpg.Pool, catalogue: Catalogue, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the test pool with these settings, called in-process (ASGI)."""
    app = build_app(
        pool=pool,
        catalogue=catalogue,
        settings=IngestSettings(jwt_secret=SECRET, **settings),
        health=Health(service="guards-test"),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


# --- C1 / L6: privileges before SQL ---------------------------------------------------------------------------


async def test_a_write_the_role_may_not_make_is_refused_without_touching_postgresql(catalogue: Catalogue) -> None:
    # No pool at all: reaching the database would be the catch-all's 500, so a 401/403 here was decided from the
    # privileges the catalogue read at start-up.
    app = build_app(
        pool=None, catalogue=catalogue, settings=IngestSettings(jwt_secret=SECRET), health=Health(service="t")
    )
    # 2,000 rows with 2,000 different key sets: the probe's 31 s / 5.4 GB statement.
    rows = [
        {"device_id": str(uuid.uuid4()), "time": f"2026-01-01T00:00:{index % 60:02d}Z"}
        | {column: 1.0 for bit, column in enumerate(METER_COLUMNS) if index >> bit & 1}
        for index in range(2000)
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        answers = [
            await client.post("/rest/v1/mg_meter_readings", headers=headers_for(ANON), json=rows),
            await client.post("/rest/v1/mg_device_registry", headers=headers_for(ANON), json=[{}] * 10_000),
            await client.post("/rest/v1/mg_device_registry", headers=headers_for(ANON), json=[]),
            await client.patch(f"/rest/v1/mg_device_registry?id=eq.{uuid.uuid4()}", headers=headers_for(ANON), json={}),
            await client.delete("/rest/v1/mg_bess_readings?soe=eq.1", headers=headers_for(ANON)),
            await client.post("/rest/v1/mg_device_registry", headers=headers_for(AUTHENTICATED), json=[]),
            await client.patch("/rest/v1/mg_bess_readings?soe=eq.1", headers=headers_for(AUTHENTICATED), json={}),
            await client.get("/rest/v1/mg_device_registry?select=name,metadata", headers=headers_for(ANON)),
        ]
    assert [(answer.status_code, answer.json()["code"]) for answer in answers] == [(401, "42501")] * 5 + [
        (403, "42501")
    ] * 2 + [(401, "42501")]
    assert answers[0].json()["message"] == "permission denied for table mg_meter_readings"
    assert answers[0].headers["WWW-Authenticate"] == "Bearer"


async def test_anon_empty_insert_and_empty_patch_are_refused_as_postgrest_does(api_url: str) -> None:
    # L6: these were 201 and 204, since no statement (or one that touched nothing) ever reached a privilege check.
    created = await call(api_url, "POST", "/rest/v1/mg_bess_readings", token=ANON, body=[])
    patched = await call(api_url, "PATCH", f"/rest/v1/mg_device_registry?id=eq.{uuid.uuid4()}", token=ANON, body={})
    assert (created.status_code, created.json()["code"]) == (401, "42501")
    assert (patched.status_code, patched.json()["code"]) == (401, "42501")
    # The roles that may still get PostgREST's answers to an empty insert and an empty update.
    assert (await call(api_url, "POST", "/rest/v1/mg_bess_readings", token=AUTHENTICATED, body=[])).status_code == 201
    nothing = await call(api_url, "PATCH", f"/rest/v1/mg_device_registry?id=eq.{uuid.uuid4()}", body={})
    assert nothing.status_code == 204


def test_an_insert_compiles_to_one_statement_of_the_same_size_whatever_the_rows(catalogue: Catalogue) -> None:
    def compiled_sql(rows: list[dict[str, Any]]) -> str:
        query = parse_request(
            catalogue, method="POST", relation="mg_meter_readings", query="", headers={}, body=json.dumps(rows).encode()
        )
        assert isinstance(query, InsertQuery)
        compiled = compile_query(catalogue, query)
        assert len(compiled.parameters) == 1  # the rows travel as one JSON value
        return compiled.sql

    few = compiled_sql([{"device_id": "d", "time": "t", column: 1} for column in METER_COLUMNS[:2]])
    many = compiled_sql(
        [
            {"device_id": "d", "time": "t"}
            | {column: 1 for bit, column in enumerate(METER_COLUMNS) if index >> bit & 1}
            for index in range(2000)
        ]
    )
    assert many.count("INSERT INTO") == 1 and few.count("INSERT INTO") == 1
    registry: Relation = catalogue.relation("mg_meter_readings")
    assert len(many) < 400 * len(registry.columns)  # bounded by the table's columns, not the 2,000 key sets
    empty_rows = compile_query(
        catalogue,
        parse_request(
            catalogue, method="POST", relation="mg_device_registry", query="", headers={}, body=b"[{}, {}, {}]"
        ),
    )
    assert empty_rows.sql.count("DEFAULT") == 0 and len(empty_rows.sql) < 1000


async def test_one_statement_insert_keeps_defaults_for_absent_keys_and_nulls_for_null_keys(api_url: str) -> None:
    device = str(uuid.uuid4())
    given_id = str(uuid.uuid4())
    moment = datetime(2026, 4, 1, tzinfo=UTC)
    rows = [
        {"device_id": device, "time": moment.isoformat(), "soe": 10, "target_power": 0},
        {
            "device_id": device,
            "time": (moment + timedelta(minutes=1)).isoformat(),
            "soe": 20,
            "target_power": 0,
            "id": given_id,
            "command_source": None,
        },
        {
            "device_id": device,
            "time": (moment + timedelta(minutes=2)).isoformat(),
            "soe": 30,
            "target_power": 0,
            "command_source": 2,
        },
    ]
    created = await call(
        api_url,
        "POST",
        "/rest/v1/mg_bess_readings?select=id,soe,command_source,created_at",
        body=rows,
        headers={"Prefer": "return=representation"},
    )
    assert created.status_code == 201, created.text
    stored = created.json()
    assert [row["soe"] for row in stored] == [10, 20, 30]  # in the body's order
    assert [row["command_source"] for row in stored] == [None, None, 2]
    assert stored[1]["id"] == given_id
    assert uuid.UUID(stored[0]["id"]) and uuid.UUID(stored[2]["id"]) and stored[0]["id"] != stored[2]["id"]
    assert all(row["created_at"] for row in stored)  # now(), not null
    # Every key left out of a row, registry columns with defaults included, still takes the default.
    name = f"guards-{uuid.uuid4().hex[:8]}"
    registered = await call(
        api_url,
        "POST",
        "/rest/v1/mg_device_registry?select=name,active,metadata",
        body=[
            {"name": name, "type": "bess", "site": "X"},
            {"name": name + "-2", "type": "bess", "site": "X", "active": False},
        ],
        headers={"Prefer": "return=representation"},
    )
    assert registered.json() == [
        {"name": name, "active": True, "metadata": None},
        {"name": name + "-2", "active": False, "metadata": None},
    ]
    defaults_only = await call(api_url, "POST", "/rest/v1/mg_device_registry", body=[{}, {}])
    assert (defaults_only.status_code, defaults_only.json()["code"]) == (400, "23502")  # name has no default


async def test_rows_and_body_size_are_capped_per_role(pool: asyncpg.Pool, catalogue: Catalogue) -> None:
    async with served(pool, catalogue, api_max_insert_rows_service_role=3, api_max_body_bytes_anon=2048) as client:
        await _rows_and_body_size_are_capped_per_role(client)


async def _rows_and_body_size_are_capped_per_role(app_client: httpx.AsyncClient) -> None:
    device = str(uuid.uuid4())
    rows = [
        {"device_id": device, "time": f"2026-05-01T00:0{minute}:00Z", "soe": 1, "target_power": 0}
        for minute in range(4)
    ]
    too_many = await app_client.post("/rest/v1/mg_bess_readings", headers=headers_for(SERVICE), json=rows)
    assert too_many.status_code == 413
    assert too_many.json()["message"] == "Too many rows in one insert: 4; the limit for the service_role role is 3 rows"
    assert (
        await app_client.post("/rest/v1/mg_bess_readings", headers=headers_for(SERVICE), json=rows[:3])
    ).status_code == 201
    large = await app_client.post(
        "/rest/v1/rpc/get_meter_readings_5m", headers=headers_for(ANON), content=b" " * 2049 + b"{}"
    )
    assert (large.status_code, large.json()["code"]) == (413, "PGRST102")
    assert large.json()["message"] == "Request body too large: the limit for the anon role is 2048 bytes"
    # The same body is within the service_role's (default) limit.
    assert (
        await app_client.post(
            "/rest/v1/rpc/get_meter_readings_5m", headers=headers_for(SERVICE), content=b" " * 2049 + b"{}"
        )
    ).status_code != 413


# --- M4: device metadata ----------------------------------------------------------------------------------------


async def test_anon_cannot_read_device_metadata_but_the_other_columns(api_url: str) -> None:
    name = f"modbus-{uuid.uuid4().hex[:8]}"
    metadata = {"modbus": {"host": "10.0.0.5", "port": 502, "unit_id": 1}}
    registered = await call(
        api_url,
        "POST",
        "/rest/v1/mg_device_registry",
        body={"name": name, "type": "bess", "site": "M4", "metadata": metadata},
    )
    assert registered.status_code == 201
    mine = f"name=eq.{name}"
    refused = [
        await call(api_url, "GET", f"/rest/v1/mg_device_registry?select=name,metadata&{mine}", token=ANON),
        # As PostgREST with column privileges: a restricted role must name its columns.
        await call(api_url, "GET", f"/rest/v1/mg_device_registry?{mine}", token=ANON),
        await call(api_url, "GET", f"/rest/v1/mg_device_registry?select=*&{mine}", token=ANON),
        await call(api_url, "GET", f"/rest/v1/mg_device_registry?select=name&{mine}&metadata=not.is.null", token=ANON),
        await call(api_url, "GET", f"/rest/v1/mg_device_registry?select=name&{mine}&order=metadata", token=ANON),
        await call(
            api_url, "GET", "/rest/v1/mg_device_registry?select=name&or=(metadata.is.null,name.eq.x)", token=ANON
        ),
    ]
    for answer in refused:
        assert (answer.status_code, answer.json()["code"]) == (401, "42501"), answer.text
        assert "10.0.0.5" not in answer.text
    public = await call(
        api_url, "GET", f"/rest/v1/mg_device_registry?select=id,name,type,site,active,created_at&{mine}", token=ANON
    )
    assert public.status_code == 200 and public.json()[0]["name"] == name
    for token in (AUTHENTICATED, SERVICE):
        read = await call(api_url, "GET", f"/rest/v1/mg_device_registry?select=name,metadata&{mine}", token=token)
        assert read.json() == [{"name": name, "metadata": metadata}]


# --- H1: filters ------------------------------------------------------------------------------------------------


async def test_a_request_with_too_many_filters_is_refused_naming_the_cap(api_url: str) -> None:
    # The probe's filter had 1,500 of these (test_api_attack.py sends it); 150 keep the URL short.
    terms = ",".join(f"time.like.*{index:03d}*x" for index in range(150))
    attack = await call(api_url, "GET", f"/rest/v1/mg_bess_readings?select=soe&or=({terms})", token=ANON)
    assert (attack.status_code, attack.json()["code"]) == (400, "PGRST100")
    assert attack.json()["message"].startswith("Too many filters: 150; a request may hold at most 100")
    nested = ",".join(f"and(soe.eq.{index},soe.eq.{index})" for index in range(51))
    assert (await call(api_url, "GET", f"/rest/v1/mg_bess_readings?or=({nested})", token=ANON)).status_code == 400
    flat = "&".join(f"soe=neq.{index}" for index in range(101))
    assert (await call(api_url, "DELETE", f"/rest/v1/mg_bess_readings?{flat}")).status_code == 400
    at_the_cap = ",".join(f"soe.eq.{index}" for index in range(100))
    assert (
        await call(api_url, "GET", f"/rest/v1/mg_bess_readings?select=soe&limit=1&or=({at_the_cap})", token=ANON)
    ).status_code == 200


# --- L5: NUL bytes and the statement timeout --------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["select=%22a%00b%22:soe", "select=soe&soe=eq.1%00", "select=soe&or=(soe.eq.%00)", "sel%00ect=soe"],
)
async def test_a_nul_byte_anywhere_in_the_query_is_a_400(api_url: str, query: str) -> None:
    answer = await call(api_url, "GET", f"/rest/v1/mg_bess_readings?{query}", token=ANON)
    assert (answer.status_code, answer.json()["code"]) == (400, "PGRST100"), answer.text
    assert "NUL" in answer.json()["details"]


async def test_a_statement_past_the_role_timeout_is_reported_as_the_statement_timeout(
    api_url: str, database_url: str
) -> None:
    # A lock held elsewhere makes the anon read wait; the wait counts towards its statement timeout (3 s).
    locker = await asyncpg.connect(database_url)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE flux.market_data_types IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        answer = await call(api_url, "GET", "/rest/v1/market_data_types?select=id", token=ANON)
        waited = time.monotonic() - started
        await transaction.rollback()
    finally:
        await locker.close()
    assert answer.status_code == 500, answer.text
    assert answer.json() == {
        "code": "57014",
        "details": "The statement timeout of the anon role is 3 s",
        "hint": None,
        "message": "canceling statement due to statement timeout",
    }
    assert waited < 8  # anon's 3 s, not the 30 s every role had


# --- L1: digits that are not 0-9 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/rest/v1/market_data_types?limit=%C2%B2",  # ²
        "/rest/v1/market_data_types?offset=%C2%B2",
        "/rest/v1/market_data_types?limit=%D9%A3",  # Arabic-Indic three: int() reads it, PostgREST does not
        "/rest/v1/rpc/get_meter_readings_5m?start_time=2026-01-01T00:00:00Z&end_time=2026-01-02T00:00:00Z&limit=%C2%B2",
        "/rest/v1/rpc/get_meter_readings_30m?start_time=2026-01-01T00:00:00Z&end_time=2026-01-02T00:00:00Z&offset=%C2%B2",
    ],
)
async def test_superscript_and_other_non_ascii_digits_are_a_400(api_url: str, path: str) -> None:
    answer = await call(api_url, "GET", path, token=ANON)
    assert (answer.status_code, answer.json()["code"]) == (400, "PGRST100"), answer.text


# --- the rules, without a database ------------------------------------------------------------------------------

_TABLE = Relation(
    "flux",
    "things",
    {name: Column(name, "text") for name in ("id", "name", "secret")},
    primary_key=("id",),
)
_RULES = Catalogue(
    "flux",
    {"things": _TABLE},
    privileges={
        ("writer", "things"): Privileges(
            select=frozenset({"id", "name"}), insert=frozenset({"id", "name", "secret"}), update=frozenset({"name"})
        ),
    },
)


@pytest.mark.parametrize(
    ("method", "query", "body", "headers", "allowed"),
    [
        ("GET", "select=id,name", b"", {}, True),
        ("GET", "select=id,secret", b"", {}, False),
        ("GET", "select=id&secret=eq.x", b"", {}, False),
        ("GET", "select=id&or=(name.eq.a,and(id.eq.1,secret.eq.x))", b"", {}, False),
        ("GET", "select=id&order=secret", b"", {}, False),
        ("POST", "", b'[{"id": "1", "secret": "s"}, {"name": "n"}]', {}, True),
        # A representation reads the rows back: SELECT on what it returns.
        ("POST", "", b'{"id": "1"}', {"Prefer": "return=representation"}, False),
        ("POST", "select=id", b'{"id": "1"}', {"Prefer": "return=representation"}, True),
        # An upsert that updates on conflict needs UPDATE on the columns it sets.
        ("POST", "", b'{"id": "1", "name": "n"}', {"Prefer": "resolution=merge-duplicates"}, False),
        ("POST", "", b'{"id": "1", "name": "n"}', {"Prefer": "resolution=ignore-duplicates"}, True),
        ("PATCH", "id=eq.1", b'{"name": "n"}', {}, True),
        ("PATCH", "id=eq.1", b'{"secret": "s"}', {}, False),
        ("PATCH", "secret=eq.1", b'{"name": "n"}', {}, False),
        ("DELETE", "id=eq.1", b"", {}, False),
    ],
)
def test_privilege_rules(method: str, query: str, body: bytes, headers: dict[str, str], allowed: bool) -> None:
    parsed = parse_request(_RULES, method=method, relation="things", query=query, headers=headers, body=body)
    if allowed:
        check_privileges(_RULES, "writer", parsed, anonymous=False)
        return
    with pytest.raises(PostgrestError) as refused:
        check_privileges(_RULES, "writer", parsed, anonymous=False)
    assert (refused.value.status, refused.value.code, refused.value.message) == (
        403,
        "42501",
        "permission denied for table things",
    )
    with pytest.raises(PostgrestError) as anonymous:
        check_privileges(_RULES, "anon", parsed, anonymous=True)
    assert anonymous.value.status == 401


def test_a_nul_in_a_quoted_alias_never_reaches_the_sql_text() -> None:
    parsed = parse_request(_RULES, method="GET", relation="things", query='select="a\x00b":name', headers={})
    with pytest.raises(PostgrestError) as refused:
        compile_query(_RULES, parsed)
    assert (refused.value.status, refused.value.code) == (400, "PGRST100")
