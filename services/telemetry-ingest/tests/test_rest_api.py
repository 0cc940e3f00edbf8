"""The Flux REST API over real HTTP and PostgreSQL: the postgrest and supabase clients, and PostgREST's behaviours."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from postgrest import APIError, AsyncPostgrestClient, CountMethod, ReturnMethod
from supabase import AsyncClientOptions, acreate_client

from gridloop_common.observability import Health
from telemetry_ingest.api.postgrest import Catalogue
from telemetry_ingest.api.routes import build_app
from telemetry_ingest.settings import IngestSettings

from .api_fixtures import SECRET, ControlledClock, headers_for, key
from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url

pytestmark = pytest.mark.connected

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SERVICE = key("service_role")
AUTHENTICATED = key("authenticated", sub=str(uuid.uuid4()))
ANON = key("anon")


def bess_rows(device: str, *, soes: tuple[float, ...] = (10, 30, 50, 70, 90)) -> list[dict[str, Any]]:
    """Readings a minute apart; command_source is the index, null on the last one."""
    return [
        {
            "device_id": device,
            "time": (BASE + timedelta(minutes=index)).isoformat(),
            "soe": soe,
            "target_power": -2.5 * index,
            "command_source": index if index < len(soes) - 1 else None,
        }
        for index, soe in enumerate(soes)
    ]


async def test_postgrest_client_reads_writes_and_calls(api_url: str) -> None:
    device = str(uuid.uuid4())
    async with AsyncPostgrestClient(f"{api_url}/rest/v1", headers=headers_for(SERVICE), schema="flux") as client:
        readings = client.from_("mg_bess_readings")
        rows = bess_rows(device)
        one = await readings.insert(rows[0]).execute()
        assert one.data[0]["soe"] == 10 and uuid.UUID(one.data[0]["id"])
        many = await client.from_("mg_bess_readings").insert(rows[1:], returning=ReturnMethod.minimal).execute()
        assert many.data == []

        def mine() -> Any:
            return client.from_("mg_bess_readings").select("soe").eq("device_id", device)

        async def soes(builder: Any) -> list[float]:
            return [row["soe"] for row in (await builder.execute()).data]

        assert await soes(mine().gt("soe", 40).order("soe")) == [50, 70, 90]
        assert await soes(mine().in_("soe", [10, 90]).order("soe")) == [10, 90]
        assert await soes(mine().is_("command_source", "null")) == [90]
        assert await soes(mine().not_.is_("command_source", "null").order("soe")) == [10, 30, 50, 70]
        assert await soes(mine().not_.in_("soe", [10, 90]).order("soe")) == [30, 50, 70]
        assert await soes(mine().or_("soe.lt.20,soe.gt.80").order("soe")) == [10, 90]
        assert await soes(mine().order("soe", desc=True).limit(2)) == [90, 70]
        assert await soes(mine().order("soe").range(1, 2)) == [30, 50]

        columns = await client.from_("mg_bess_readings").select("time,soe").eq("device_id", device).limit(1).execute()
        assert set(columns.data[0]) == {"time", "soe"}
        counted = (
            await client.from_("mg_bess_readings")
            .select("soe", count=CountMethod.exact)
            .eq("device_id", device)
            .limit(2)
            .execute()
        )
        assert (counted.count, len(counted.data)) == (5, 2)

        name = f"WLCE-BESS-{uuid.uuid4().hex[:8]}"
        await client.from_("mg_device_registry").insert({"name": name, "type": "bess", "site": "WLCE"}).execute()
        found = (
            await client.from_("mg_device_registry")
            .select("name,active")
            .ilike("name", f"%bess-{name[-8:]}%")
            .execute()
        )
        assert found.data == [{"name": name, "active": True}]

        upserted = await (
            client.from_("mg_bess_readings").upsert({**rows[0], "soe": 15}, on_conflict="device_id,time").execute()
        )
        assert [row["soe"] for row in upserted.data] == [15]
        updated = await (
            client.from_("mg_bess_readings")
            .update({"command_source": 5})
            .eq("device_id", device)
            .gte("soe", 70)
            .execute()
        )
        assert sorted(row["soe"] for row in updated.data) == [70, 90]
        assert {row["command_source"] for row in updated.data} == {5}
        deleted = await client.from_("mg_bess_readings").delete().eq("device_id", device).lt("soe", 40).execute()
        assert sorted(row["soe"] for row in deleted.data) == [15, 30]
        assert await soes(mine().order("soe")) == [50, 70, 90]

        meter = str(uuid.uuid4())
        start = datetime(2026, 3, 2, tzinfo=UTC)
        meter_rows = [
            {
                "device_id": meter,
                "time": (start + timedelta(minutes=minute)).isoformat(),
                "power_total_active": 100.0,
                "energy_imported_active": 10.0 * minute,
            }
            for minute in range(60)
        ]
        await client.from_("mg_meter_readings").insert(meter_rows, returning=ReturnMethod.minimal).execute()
        settlement = await (
            client.rpc(
                "get_meter_readings_30m",
                {
                    "start_time": start.isoformat(),
                    "end_time": (start + timedelta(hours=1)).isoformat(),
                    "device_ids": [meter],
                },
            )
            .select("time_b,power_total_active_avg,energy_imported_active_delta")
            .execute()
        )
        assert settlement.data == [
            {"time_b": "2026-03-02T00:00:00+00:00", "power_total_active_avg": 100, "energy_imported_active_delta": 300},
            {"time_b": "2026-03-02T00:30:00+00:00", "power_total_active_avg": 100, "energy_imported_active_delta": 290},
        ]
        arguments = {
            "device_ids": [meter],
            "start_time": start.isoformat(),
            "end_time": (start + timedelta(hours=1)).isoformat(),
        }
        read_only = await client.rpc("get_meter_readings_5m", arguments, get=True).select("time_b").execute()
        assert len(read_only.data) == 12  # GET: arguments in the query string, a read-only transaction
        with pytest.raises(APIError) as duplicate:
            await client.from_("mg_bess_readings").insert(rows[2]).execute()
        assert duplicate.value.code == "23505"


async def test_supabase_client_with_anon_and_service_keys(api_url: str) -> None:
    device = str(uuid.uuid4())
    async with httpx.AsyncClient() as http:
        service = await acreate_client(api_url, SERVICE, options=AsyncClientOptions(schema="flux", httpx_client=http))
        inserted = await service.table("mg_bess_readings").insert(bess_rows(device)).execute()
        assert len(inserted.data) == 5
        public = await acreate_client(api_url, ANON, options=AsyncClientOptions(schema="flux", httpx_client=http))
        latest = await (
            public.table("mg_bess_readings")
            .select("soe,command_source")
            .eq("device_id", device)
            .order("time", desc=True)
            .limit(1)
            .execute()
        )
        assert latest.data == [{"soe": 90, "command_source": None}]
        types = await public.table("market_data_types").select("id,name").order("id").execute()
        assert [row["name"] for row in types.data][:4] == [
            "niv_estimate",
            "wholesale_price",
            "imbalance_price",
            "axle_dispatch",
        ]
        with pytest.raises(APIError) as refused:
            await public.table("mg_bess_readings").insert(bess_rows(device)[0]).execute()
        assert refused.value.code == "42501"
        window = await service.rpc(
            "get_meter_readings_30m",
            {"start_time": "2020-01-01T00:00:00Z", "end_time": "2020-01-02T00:00:00Z", "device_ids": None},
        ).execute()
        assert window.data == []


async def call(
    url: str,
    method: str,
    path: str,
    *,
    token: str | None = SERVICE,
    headers: dict[str, str] | None = None,
    body: Any = None,
    content: bytes | None = None,
) -> httpx.Response:
    sent = {**(headers_for(token) if token is not None else {}), **(headers or {})}
    async with httpx.AsyncClient(base_url=url) as client:
        return await client.request(
            method,
            path,
            headers=sent,
            content=content if content is not None else None if body is None else json.dumps(body).encode(),
        )


def signed(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


# Time claims as offsets from the API's clock, signed when the case runs: a time taken when this module is
# imported goes stale while the session runs (CI took 6-8 min to reach these cases), and the API's clock is
# the fixture's, which other tests move forward.
CLAIMS_AT = "claims_relative_to_the_api_clock"
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (name, method, path, options, status, code)
    ("bad operator", "GET", "/rest/v1/mg_bess_readings?soe=xx.1", {}, 400, "PGRST100"),
    ("bad order", "GET", "/rest/v1/mg_bess_readings?order=time.asc.nullslasttt", {}, 400, "PGRST100"),
    ("unclosed logic tree", "GET", "/rest/v1/mg_bess_readings?or=(soe.eq.1", {}, 400, "PGRST100"),
    (
        "too deep logic tree",
        "GET",
        "/rest/v1/mg_bess_readings?or=" + "(or" * 40 + "(soe.eq.1" + ")" * 41,
        {},
        400,
        "PGRST100",
    ),
    ("bad limit", "GET", "/rest/v1/mg_bess_readings?limit=ten", {}, 400, "PGRST100"),
    ("unknown column", "GET", "/rest/v1/mg_bess_readings?nope=eq.1", {}, 400, "42703"),
    ("unknown select column", "GET", "/rest/v1/mg_bess_readings?select=nope", {}, 400, "42703"),
    ("bad value", "GET", "/rest/v1/mg_bess_readings?soe=eq.abc", {}, 400, "22P02"),
    ("bad timestamp", "GET", "/rest/v1/mg_bess_readings?time=gte.yesterday-ish", {}, 400, "22007"),
    ("unknown table", "GET", "/rest/v1/mg_bess_reading", {}, 404, "PGRST205"),
    ("unknown path", "GET", "/rest/v1/mg_bess_readings/extra", {}, 404, "PGRST125"),
    ("outside the API", "GET", "/nothing-here", {}, 404, "PGRST125"),
    ("unknown function", "POST", "/rest/v1/rpc/get_meter_readings_1h", {"body": {}}, 404, "PGRST202"),
    ("internal function", "POST", "/rest/v1/rpc/ensure_reading_partitions", {"body": {}}, 404, "PGRST202"),
    ("unknown argument", "POST", "/rest/v1/rpc/get_meter_readings_5m", {"body": {"x": 1}}, 404, "PGRST202"),
    ("rpc with PATCH", "PATCH", "/rest/v1/rpc/get_meter_readings_5m", {"body": {}}, 405, "PGRST101"),
    ("PUT", "PUT", "/rest/v1/mg_bess_readings?id=eq.1", {"body": {}}, 405, "PGRST117"),
    ("invalid JSON", "POST", "/rest/v1/mg_bess_readings", {"content": b"{not json"}, 400, "PGRST102"),
    ("deeply nested JSON", "POST", "/rest/v1/mg_bess_readings", {"content": b"[" * 100_000}, 400, "PGRST102"),
    ("unknown body key", "POST", "/rest/v1/mg_bess_readings", {"body": {"nope": 1}}, 400, "PGRST204"),
    (
        "NOT NULL",
        "POST",
        "/rest/v1/mg_bess_readings",
        {"body": {"device_id": str(uuid.uuid4()), "time": "2026-01-01T00:00:00Z"}},
        400,
        "23502",
    ),
    (
        "check",
        "POST",
        "/rest/v1/mg_bess_readings",
        {"body": {"device_id": str(uuid.uuid4()), "time": "2026-01-01T00:00:00Z", "soe": 101, "target_power": 0}},
        400,
        "23514",
    ),
    ("PATCH without filter", "PATCH", "/rest/v1/mg_bess_readings", {"body": {"soe": 1}}, 400, "21000"),
    ("DELETE without filter", "DELETE", "/rest/v1/mg_bess_readings", {}, 400, "21000"),
    (
        "schema not exposed",
        "GET",
        "/rest/v1/mg_bess_readings",
        {"headers": {"Accept-Profile": "public"}},
        406,
        "PGRST106",
    ),
    (
        "write schema not exposed",
        "POST",
        "/rest/v1/mg_bess_readings",
        {"headers": {"Content-Profile": "public"}, "body": {}},
        406,
        "PGRST106",
    ),
    (
        "singular of many",
        "GET",
        "/rest/v1/market_data_types",
        {"headers": {"Accept": "application/vnd.pgrst.object+json"}},
        406,
        "PGRST116",
    ),
    (
        "range past the end",
        "GET",
        "/rest/v1/market_data_types?offset=100000",
        {"headers": {"Prefer": "count=exact"}},
        416,
        "PGRST103",
    ),
    (
        "body too large",
        "POST",
        "/rest/v1/mg_bess_readings",
        {"content": b" " * (16 * 1024 * 1024 + 1)},
        413,
        "PGRST102",
    ),
    # Keys (PostgREST AuthSpec / Supabase gateway).
    ("no key", "GET", "/rest/v1/market_data_types", {"token": None}, 401, "PGRST302"),
    (
        "empty bearer",
        "GET",
        "/rest/v1/market_data_types",
        {"token": None, "headers": {"Authorization": "Bearer"}},
        401,
        "PGRST301",
    ),
    ("two-part JWT", "GET", "/rest/v1/market_data_types", {"token": "aaa.bbb"}, 401, "PGRST301"),
    (
        "bad signature",
        "GET",
        "/rest/v1/market_data_types",
        {"token": signed({"role": "anon"}, secret="another-secret-of-the-same-length-0123456789")},
        401,
        "PGRST301",
    ),
    (
        "alg none",
        "GET",
        "/rest/v1/market_data_types",
        {"token": jwt.encode({"role": "service_role"}, None, algorithm="none")},
        401,
        "PGRST301",
    ),
    ("garbage", "GET", "/rest/v1/market_data_types", {"token": "not.a.jwt"}, 401, "PGRST301"),
    (
        "expired beyond skew",
        "GET",
        "/rest/v1/market_data_types",
        {CLAIMS_AT: {"role": "anon", "exp": -31}},
        401,
        "PGRST303",
    ),
    (
        "future nbf",
        "GET",
        "/rest/v1/market_data_types",
        {CLAIMS_AT: {"role": "anon", "nbf": 120}},
        401,
        "PGRST303",
    ),
    (
        "exp not a number",
        "GET",
        "/rest/v1/market_data_types",
        {"token": signed({"role": "anon", "exp": "soon"})},
        401,
        "PGRST303",
    ),
    ("no role claim", "GET", "/rest/v1/market_data_types", {"token": signed({"sub": "x"})}, 401, "PGRST302"),
    ("unknown role", "GET", "/rest/v1/market_data_types", {"token": signed({"role": "postgres"})}, 401, "PGRST303"),
    (
        "bad apikey next to a good bearer",
        "GET",
        "/rest/v1/market_data_types",
        {"token": None, "headers": {"apikey": "x.y.z", "Authorization": f"Bearer {SERVICE}"}},
        401,
        "PGRST301",
    ),
    ("openapi needs a key", "GET", "/rest/v1/", {"token": None}, 401, "PGRST302"),
    # Privileges: 42501 is 401 for the anon role (PostgREST's anonymous), 403 for any other role.
    (
        "anon insert",
        "POST",
        "/rest/v1/mg_bess_readings",
        {"token": ANON, "body": bess_rows(str(uuid.uuid4()))[0]},
        401,
        "42501",
    ),
    ("anon delete", "DELETE", "/rest/v1/mg_bess_readings?soe=eq.1", {"token": ANON}, 401, "42501"),
    (
        "authenticated registers a device",
        "POST",
        "/rest/v1/mg_device_registry",
        {"token": AUTHENTICATED, "body": {"name": "x", "type": "bess", "site": "WLCE"}},
        403,
        "42501",
    ),
    (
        "authenticated update",
        "PATCH",
        "/rest/v1/mg_bess_readings?soe=eq.1",
        {"token": AUTHENTICATED, "body": {"soe": 2}},
        403,
        "42501",
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "options", "status", "code"), CASES, ids=[case[0] for case in CASES]
)
async def test_postgrest_behaviours(
    api_url: str,
    api_clock: ControlledClock,
    name: str,
    method: str,
    path: str,
    options: dict[str, Any],
    status: int,
    code: str,
) -> None:
    if CLAIMS_AT in options:
        claims = {
            claim: value if claim == "role" else int(api_clock()) + value for claim, value in options[CLAIMS_AT].items()
        }
        options = {**{key: value for key, value in options.items() if key != CLAIMS_AT}, "token": signed(claims)}
    response = await call(api_url, method, path, **options)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "details", "hint", "message"}
    assert body["code"] == code
    assert response.headers["content-type"].startswith("application/json")
    if path.startswith("/rest/v1/"):  # rate limits cover the API, not the probes or unknown paths
        for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            assert response.headers[header].isdigit()
    if status == 401:
        challenge = response.headers["WWW-Authenticate"]
        if code in ("PGRST302", "42501"):
            assert challenge == "Bearer"
        else:
            assert challenge.startswith('Bearer error="invalid_token", error_description="')


async def test_jwt_messages_and_skew(api_url: str, api_clock: ControlledClock) -> None:
    now = api_clock()
    expired = await call(
        api_url, "GET", "/rest/v1/market_data_types", token=signed({"role": "anon", "exp": int(now) - 40})
    )
    assert expired.json()["message"] == "JWT expired"
    assert expired.headers["WWW-Authenticate"] == 'Bearer error="invalid_token", error_description="JWT expired"'
    within_skew = await call(
        api_url, "GET", "/rest/v1/market_data_types", token=signed({"role": "anon", "exp": int(now) - 20})
    )
    assert within_skew.status_code == 200
    parts = await call(api_url, "GET", "/rest/v1/market_data_types", token="aaa.bbb")
    assert parts.json()["message"] == "Expected 3 parts in JWT; got 2"
    empty = await call(api_url, "GET", "/rest/v1/market_data_types", token=None, headers={"Authorization": "Bearer"})
    assert empty.json()["message"] == "Empty JWT is sent in Authorization header"
    missing = await call(api_url, "GET", "/rest/v1/market_data_types", token=None)
    assert missing.json() == {
        "code": "PGRST302",
        "details": None,
        "hint": "No `apikey` request header or url param was found.",
        "message": "No API key found in request",
    }
    as_parameter = await call(api_url, "GET", f"/rest/v1/market_data_types?apikey={ANON}&select=id&id=eq.1", token=None)
    assert (as_parameter.status_code, as_parameter.json()) == (200, [{"id": 1}])
    recovered = await call(api_url, "GET", "/rest/v1/market_data_types?select=id&id=eq.2", token=ANON)
    assert recovered.json() == [{"id": 2}]  # PostgREST's "recovers after 401"


async def test_duplicate_key_is_409(api_url: str) -> None:
    row = bess_rows(str(uuid.uuid4()))[0]
    created = await call(api_url, "POST", "/rest/v1/mg_bess_readings", body=row)
    assert (created.status_code, created.content) == (201, b"")
    duplicate = await call(api_url, "POST", "/rest/v1/mg_bess_readings", body=row)
    assert duplicate.status_code == 409
    body = duplicate.json()
    assert body["code"] == "23505"
    assert body["message"].startswith("duplicate key value violates unique constraint")
    assert body["details"].startswith('Key (device_id, "time")=(') or body["details"].startswith(
        "Key (device_id, time)=("
    )


async def test_prefer_return_and_ranges(api_url: str) -> None:
    device = str(uuid.uuid4())
    minimal = await call(
        api_url, "POST", "/rest/v1/mg_bess_readings", body=bess_rows(device), headers={"Prefer": "return=minimal"}
    )
    assert (minimal.status_code, minimal.content, minimal.headers["Content-Range"]) == (201, b"", "*/*")
    assert "content-type" not in minimal.headers
    representation = await call(
        api_url,
        "POST",
        "/rest/v1/mg_bess_readings?select=soe",
        body={**bess_rows(device)[0], "time": BASE.replace(hour=13).isoformat()},
        headers={"Prefer": "return=representation"},
    )
    assert (representation.status_code, representation.json()) == (201, [{"soe": 10}])
    assert representation.headers["Preference-Applied"] == "return=representation"

    ranged = await call(
        api_url,
        "GET",
        f"/rest/v1/mg_bess_readings?device_id=eq.{device}&select=soe&order=time",
        headers={"Range": "1-2", "Range-Unit": "items", "Prefer": "count=exact"},
    )
    assert (ranged.status_code, ranged.headers["Content-Range"], ranged.json()) == (
        206,
        "1-2/6",
        [{"soe": 30}, {"soe": 50}],
    )
    whole = await call(
        api_url, "GET", f"/rest/v1/mg_bess_readings?device_id=eq.{device}&select=soe", headers={"Prefer": "count=exact"}
    )
    assert (whole.status_code, whole.headers["Content-Range"]) == (200, "0-5/6")
    head = await call(
        api_url, "HEAD", f"/rest/v1/mg_bess_readings?device_id=eq.{device}", headers={"Prefer": "count=exact"}
    )
    assert (head.status_code, head.content, head.headers["Content-Range"]) == (200, b"", "0-5/6")

    patched = await call(
        api_url, "PATCH", f"/rest/v1/mg_bess_readings?device_id=eq.{device}&soe=gt.60", body={"command_source": 3}
    )
    assert (patched.status_code, patched.content, patched.headers["Content-Range"]) == (204, b"", "0-1/*")
    nothing = await call(api_url, "PATCH", f"/rest/v1/mg_bess_readings?device_id=eq.{device}&soe=gt.60", body={})
    assert (nothing.status_code, nothing.headers["Content-Range"]) == (204, "*/*")  # found by schemathesis: was a 503
    singular = await call(
        api_url,
        "PATCH",
        f"/rest/v1/mg_bess_readings?device_id=eq.{device}&soe=gt.60",
        body={"command_source": 4},
        headers={"Accept": "application/vnd.pgrst.object+json", "Prefer": "return=representation"},
    )
    assert (singular.status_code, singular.json()["code"]) == (406, "PGRST116")
    unchanged = await call(
        api_url, "GET", f"/rest/v1/mg_bess_readings?device_id=eq.{device}&soe=gt.60&select=command_source"
    )
    assert unchanged.json() == [{"command_source": 3}, {"command_source": 3}]  # the 406 rolled back
    deleted = await call(
        api_url,
        "DELETE",
        f"/rest/v1/mg_bess_readings?device_id=eq.{device}",
        headers={"Prefer": "return=representation"},
    )
    assert (deleted.status_code, len(deleted.json())) == (200, 6)
    options = await call(api_url, "OPTIONS", "/rest/v1/mg_bess_readings", token=None)
    assert (options.status_code, options.headers["Allow"]) == (200, "OPTIONS,GET,HEAD,POST,PATCH,DELETE")
    trailing = await call(api_url, "GET", "/rest/v1/market_data_types/")
    assert trailing.status_code == 404 and "location" not in trailing.headers


async def test_openapi_describes_tables_filters_and_functions(api_url: str) -> None:
    response = await call(api_url, "GET", "/rest/v1/", token=ANON)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openapi+json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for table in ("mg_device_registry", "mg_bess_readings", "mg_meter_readings", "market_data", "market_data_types"):
        assert set(paths[f"/{table}"]) == {"get", "head", "post", "patch", "delete"}
    assert set(paths) >= {"/rpc/get_meter_readings_5m", "/rpc/get_meter_readings_30m"}
    assert not any("ensure_reading_partitions" in path for path in paths)
    filters = {
        parameter["name"] for parameter in paths["/mg_bess_readings"]["get"]["parameters"] if "name" in parameter
    }
    assert {"time", "device_id", "soe", "target_power", "command_source"} <= filters
    schemas = document["components"]["schemas"]
    assert schemas["mg_bess_readings"]["properties"]["time"]["format"] == "date-time"
    assert schemas["mg_bess_readings.insert"]["required"] == ["time", "device_id", "soe", "target_power"]
    assert set(
        paths["/rpc/get_meter_readings_30m"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"
        ]
    ) == {
        "start_time",
        "end_time",
        "device_ids",
    }


async def test_rate_limit_burst_then_429_then_refill(api_url: str, api_clock: ControlledClock) -> None:
    api_clock.advance(3600)  # every bucket of earlier tests is full again
    api_clock.freeze()  # no real time passes for the buckets while the requests run
    async with httpx.AsyncClient(base_url=api_url, headers=headers_for(ANON)) as client:
        statuses = []
        for _ in range(100):
            response = await client.get("/rest/v1/market_data_types?select=id&limit=1")
            statuses.append(response.status_code)
        assert statuses == [200] * 100
        assert response.headers["X-RateLimit-Limit"] == "100"  # the burst: Remaining counts down from it
        assert response.headers["X-RateLimit-Remaining"] == "0"
        refused = await client.get("/rest/v1/market_data_types?select=id&limit=1")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert int(refused.headers["X-RateLimit-Reset"]) >= int(api_clock()) + 99
        body = refused.json()
        assert set(body) == {"code", "details", "hint", "message"} and body["code"] == "over_request_rate_limit"
        # Another key's bucket is untouched (service_role: 1000/min, burst 2000).
        other = await client.get("/rest/v1/market_data_types?select=id&limit=1", headers=headers_for(SERVICE))
        assert (other.status_code, other.headers["X-RateLimit-Limit"]) == (200, "2000")
        api_clock.advance(1.0)  # anon refills one request per second
        assert (await client.get("/rest/v1/market_data_types?select=id&limit=1")).status_code == 200
        assert (await client.get("/rest/v1/market_data_types?select=id&limit=1")).status_code == 429
    api_clock.unfreeze()
    api_clock.advance(3600)


async def test_metrics_count_requests_by_method_and_status(api_url: str) -> None:
    await call(api_url, "GET", "/rest/v1/market_data_types?select=id&limit=1")
    await call(api_url, "GET", "/rest/v1/nope")
    async with httpx.AsyncClient(base_url=api_url) as client:
        metrics = (await client.get("/metrics")).text
        assert (await client.get("/healthz")).status_code == 200
    assert 'gridloop_api_requests_total{method="GET",status="200"}' in metrics
    assert 'gridloop_api_requests_total{method="GET",status="404"}' in metrics
    assert "gridloop_api_request_seconds_bucket" in metrics


async def test_an_unexpected_error_is_a_logged_500(catalogue: Catalogue, caplog: pytest.LogCaptureFixture) -> None:
    # A composition mistake (no pool), not a request, is what reaches the catch-all.
    app = build_app(
        pool=None,
        catalogue=catalogue,
        settings=IngestSettings(jwt_secret=SECRET),
        health=Health(service="test"),
    )
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.ERROR, logger="telemetry_ingest.api.routes"):
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.get("/rest/v1/market_data_types", headers=headers_for(SERVICE))
    assert response.status_code == 500
    assert response.json() == {"code": "PGRSTX00", "details": None, "hint": None, "message": "Internal server error"}
    assert any(record.message == "unhandled error in API request" for record in caplog.records)


async def test_postgrest_fidelity_with_the_python_client_and_as_postgrest_js_sends(api_url: str) -> None:
    """Probe finding R4: a quote inside in.()/or=() values, Accept: text/csv, JSON paths and casts."""
    site = f"R4{uuid.uuid4().hex[:10]}"
    quoted = f'{site} 19" rack'  # one double quote, an ordinary character to PostgREST
    async with AsyncPostgrestClient(f"{api_url}/rest/v1", headers=headers_for(SERVICE), schema="flux") as client:
        await (
            client.from_("mg_device_registry")
            .insert(
                [
                    {"name": quoted, "type": "bess", "site": site, "metadata": {"max_power_kw": 5000}},
                    {"name": f"{site} other", "type": "bess", "site": site, "metadata": {"max_power_kw": 250}},
                ]
            )
            .execute()
        )
        # postgrest-py quotes and escapes the value; postgrest-js (below) sends it as it is.
        found = await client.from_("mg_device_registry").select("name").in_("name", [quoted]).execute()
        assert found.data == [{"name": quoted}]
        power = await (
            client.from_("mg_device_registry")
            .select("name,power:metadata->>max_power_kw")
            .eq("metadata->>max_power_kw", "5000")
            .eq("site", site)
            .execute()
        )
        assert power.data == [{"name": quoted, "power": "5000"}]
        listed = await (
            client.from_("mg_device_registry")
            .select("name,metadata->max_power_kw")
            .eq("site", site)
            .order("metadata->max_power_kw")
            .csv()
            .execute()
        )
        assert listed.data == f'name,max_power_kw\n{site} other,250\n"{site} 19"" rack",5000'
    unquoted = await call(
        api_url, "GET", f"/rest/v1/mg_device_registry?select=name&name=in.({quoted})&or=(name.eq.{quoted})"
    )
    assert (unquoted.status_code, unquoted.json()) == (200, [{"name": quoted}])
    cast = await call(
        api_url,
        "GET",
        f"/rest/v1/mg_device_registry?select=site::text,kw:metadata->>max_power_kw::int&name=eq.{quoted}",
    )
    assert cast.json() == [{"site": site, "kw": 5000}]


@pytest.mark.parametrize(
    ("accept", "status", "content_type"),
    [
        ("text/csv", 200, "text/csv; charset=utf-8"),
        ("application/json", 200, "application/json; charset=utf-8"),
        ("*/*", 200, "application/json; charset=utf-8"),
        ("application/vnd.pgrst.object+json", 200, "application/vnd.pgrst.object+json; charset=utf-8"),
        ("application/vnd.pgrst.object", 200, "application/vnd.pgrst.object+json; charset=utf-8"),
        ("text/plain", 406, "application/json; charset=utf-8"),
        ("application/xml", 406, "application/json; charset=utf-8"),
    ],
)
async def test_accept_is_negotiated_as_postgrest_does(
    api_url: str, accept: str, status: int, content_type: str
) -> None:
    response = await call(
        api_url, "GET", "/rest/v1/market_data_types?select=id,name&id=eq.1", headers={"Accept": accept}
    )
    assert (response.status_code, response.headers["content-type"]) == (status, content_type), response.text
    if accept == "text/csv":
        assert response.text == "id,name\n1,niv_estimate"
    if status == 406:
        assert response.json() == {
            "code": "PGRST107",
            "details": None,
            "hint": None,
            "message": f"None of these media types are available: {accept}",
        }
    root = await call(api_url, "GET", "/rest/v1/", headers={"Accept": "text/csv"})
    assert (root.status_code, root.json()["code"]) == (406, "PGRST107")


async def test_rate_limit_headers_describe_one_bucket(api_url: str, api_clock: ControlledClock) -> None:
    """Probe finding L3: X-RateLimit-Remaining is never above X-RateLimit-Limit, on any tier."""
    api_clock.advance(3600)  # every bucket is full
    for token, burst in ((ANON, 100), (AUTHENTICATED, 500), (SERVICE, 2000)):
        response = await call(api_url, "GET", "/rest/v1/market_data_types?select=id&limit=1", token=token)
        limit, remaining = int(response.headers["X-RateLimit-Limit"]), int(response.headers["X-RateLimit-Remaining"])
        assert (limit, remaining) == (burst, burst - 1)
    api_clock.advance(3600)


async def test_buckets_follow_the_resolved_client_address_and_the_key_not_its_spelling(
    pool: Any, catalogue: Catalogue
) -> None:
    """Probe findings L3 and M5: anon draws on the bucket of the client address the server resolved (uvicorn's,
    from X-Forwarded-For only for trusted proxies), never on a header the client sets; a key's bucket does not
    change when its text does (a "=" appended to the signature)."""
    clock = ControlledClock()
    clock.freeze()
    app = build_app(
        pool=pool,
        catalogue=catalogue,
        settings=IngestSettings(jwt_secret=SECRET),
        health=Health(service="test"),
        clock=clock,
    )

    async def remaining(address: str, token: str, headers: dict[str, str] | None = None) -> int:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.get(
                "/rest/v1/market_data_types?select=id&limit=1", headers={**headers_for(token), **(headers or {})}
            )
        assert response.status_code == 200, response.text
        return int(response.headers["X-RateLimit-Remaining"])

    assert await remaining("10.0.0.1", ANON) == 99
    assert await remaining("10.0.0.1", ANON, {"X-Forwarded-For": "10.9.9.9", "X-Real-IP": "10.9.9.8"}) == 98
    assert await remaining("10.0.0.2", ANON) == 99
    without_subject = signed({"role": "service_role", "iat": int(clock())})
    assert await remaining("10.0.0.1", without_subject) == 1999
    assert await remaining("10.0.0.1", without_subject + "=") == 1998
    assert await remaining("10.0.0.3", without_subject) == 1997  # a key's bucket, wherever it comes from
