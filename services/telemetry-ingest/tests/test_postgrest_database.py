"""Compiled PostgREST queries run against the real flux schema: rows, counts, mutations, RPC, errors."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from telemetry_ingest.api.postgrest import (
    Catalogue,
    PostgrestError,
    PostgrestResponse,
    Query,
    build_response,
    compile_query,
    error_from_database,
    parse_request,
    parse_rpc,
)

pytestmark = pytest.mark.connected

BASE = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


async def run(pool: asyncpg.Pool, catalogue: Catalogue, query: Query) -> PostgrestResponse:
    """What the HTTP route does: one transaction per request, database errors mapped to PostgREST's."""
    compiled = compile_query(catalogue, query)
    try:
        async with pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(compiled.sql, *compiled.parameters)
    except asyncpg.PostgresError as error:
        raise error_from_database(error) from error
    return build_response(query, total_count=row["total_count"], page_count=row["page_count"], body=row["body"])


async def request(
    pool: asyncpg.Pool,
    catalogue: Catalogue,
    method: str,
    query: str,
    *,
    relation: str = "mg_bess_readings",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> PostgrestResponse:
    parsed = parse_request(
        catalogue,
        method=method,
        relation=relation,
        query=query,
        headers=headers or {},
        body=b"" if body is None else json.dumps(body).encode(),
    )
    return await run(pool, catalogue, parsed)


@pytest.fixture
async def device(pool: asyncpg.Pool, catalogue: Catalogue) -> uuid.UUID:
    """A device with five BESS readings a minute apart: soe 10, 30, 50, 70, 90; command_source null for the last."""
    device_id = uuid.uuid4()
    rows = [
        {
            "device_id": str(device_id),
            "time": (BASE + timedelta(minutes=index)).isoformat(),
            "soe": soe,
            "target_power": -2.5 * index,
            **({"command_source": index} if index < 4 else {}),
        }
        for index, soe in enumerate((10, 30, 50, 70, 90))
    ]
    response = await request(pool, catalogue, "POST", "", body=rows, headers={"Prefer": "return=minimal"})
    assert (response.status, response.body) == (201, None)
    return device_id


async def test_catalogue_reads_the_real_schema(catalogue: Catalogue) -> None:
    bess = catalogue.relation("mg_bess_readings")
    assert bess.columns["time"].sql_type == "timestamp with time zone"
    assert bess.columns["soe"].sql_type == "real"
    assert bess.columns["id"].has_default and not bess.columns["soe"].nullable
    assert "mg_bess_readings_default" not in catalogue.tables
    assert catalogue.relation("mg_device_registry").primary_key == ("id",)
    rpc = catalogue.functions["get_meter_readings_5m"]
    assert [(parameter.name, parameter.sql_type, parameter.has_default) for parameter in rpc.parameters] == [
        ("start_time", "timestamp with time zone", True),
        ("end_time", "timestamp with time zone", True),
        ("device_ids", '"pg_catalog"."uuid"[]', True),
    ]
    assert list(rpc.columns)[:2] == ["time_b", "device_id"]
    assert "meter_readings_changed" not in catalogue.functions


@pytest.mark.parametrize(
    ("query", "expected_soe"),
    [
        ("", [10, 30, 50, 70, 90]),
        ("soe=eq.50", [50]),
        ("soe=neq.50", [10, 30, 70, 90]),
        ("soe=gt.50", [70, 90]),
        ("soe=gte.50", [50, 70, 90]),
        ("soe=lt.50", [10, 30]),
        ("soe=lte.50", [10, 30, 50]),
        ("soe=in.(10,90)", [10, 90]),
        ("soe=not.in.(10,90)", [30, 50, 70]),
        ("soe=in.()", []),
        ("command_source=is.null", [90]),
        ("command_source=not.is.null", [10, 30, 50, 70]),
        ("soe=gt.20&soe=lt.80", [30, 50, 70]),
        ("or=(soe.lt.20,soe.gt.80)", [10, 90]),
        ("or=(soe.eq.10,and(soe.gt.40,command_source.is.null))", [10, 90]),
        ("and=(soe.gt.10,or=(soe.lt.40,soe.gt.80))", [30, 90]),
        ("not.or=(soe.lt.20,soe.gt.80)", [30, 50, 70]),
        ("time=gte.2026-02-01T12:02:00Z&time=lt.2026-02-01T12:04:00Z", [50, 70]),
        ("target_power=lte.-5", [50, 70, 90]),
        ("order=soe.desc", [90, 70, 50, 30, 10]),
        ("order=command_source.desc.nullslast&limit=2", [70, 50]),
        ("order=command_source.desc.nullsfirst&limit=2", [90, 70]),
        ("order=time&limit=2&offset=1", [30, 50]),
        ("time=like.*12:03*", [70]),
    ],
)
async def test_filters_return_the_right_rows(
    pool: asyncpg.Pool, catalogue: Catalogue, device: uuid.UUID, query: str, expected_soe: list[int]
) -> None:
    ordered = query if "order=" in query else f"{query}&order=time" if query else "order=time"
    response = await request(pool, catalogue, "GET", f"device_id=eq.{device}&select=soe&{ordered}")
    assert response.status == 200
    assert [row["soe"] for row in json.loads(response.body or "")] == expected_soe


async def test_select_count_and_range(pool: asyncpg.Pool, catalogue: Catalogue, device: uuid.UUID) -> None:
    response = await request(
        pool,
        catalogue,
        "GET",
        f"device_id=eq.{device}&select=when:time,soe&order=time",
        headers={"Prefer": "count=exact", "Range": "1-2", "Range-Unit": "items"},
    )
    assert (response.status, response.headers["Content-Range"]) == (206, "1-2/5")
    rows = json.loads(response.body or "")
    assert rows == [{"when": "2026-02-01T12:01:00+00:00", "soe": 30}, {"when": "2026-02-01T12:02:00+00:00", "soe": 50}]
    empty = await request(pool, catalogue, "GET", f"device_id=eq.{uuid.uuid4()}", headers={"Prefer": "count=exact"})
    assert (empty.status, empty.headers["Content-Range"], empty.body) == (200, "*/0", "[]")


async def test_insert_with_representation_defaults_and_duplicates(pool: asyncpg.Pool, catalogue: Catalogue) -> None:
    device_id = str(uuid.uuid4())
    row = {"device_id": device_id, "time": "2026-02-01T00:00:00Z", "soe": 65.5, "target_power": -25.0}
    created = await request(
        pool, catalogue, "POST", "select=id,soe,created_at", body=row, headers={"Prefer": "return=representation"}
    )
    assert created.status == 201
    (stored,) = json.loads(created.body or "")
    assert stored["soe"] == 65.5 and uuid.UUID(stored["id"]) and stored["created_at"]
    with pytest.raises(PostgrestError) as duplicate:
        await request(pool, catalogue, "POST", "", body=row)
    assert (duplicate.value.status, duplicate.value.code) == (409, "23505")
    ignored = await request(
        pool,
        catalogue,
        "POST",
        "on_conflict=device_id,time",
        body=[row, {**row, "time": "2026-02-01T00:01:00Z"}],
        headers={"Prefer": "return=representation,resolution=ignore-duplicates"},
    )
    assert len(json.loads(ignored.body or "")) == 1
    merged = await request(
        pool,
        catalogue,
        "POST",
        "on_conflict=device_id,time&select=soe",
        body={**row, "soe": 70},
        headers={"Prefer": "return=representation,resolution=merge-duplicates"},
    )
    assert json.loads(merged.body or "") == [{"soe": 70}]


@pytest.mark.parametrize(
    ("query", "body", "code"),
    [
        ("soe=eq.abc", None, "22P02"),
        ("time=gte.yesterday-ish", None, "22007"),
        ("device_id=eq.not-a-uuid", None, "22P02"),
        ("command_source=in.(1,x)", None, "22P02"),
    ],
)
async def test_bad_values_are_clean_400s(
    pool: asyncpg.Pool, catalogue: Catalogue, query: str, body: Any, code: str
) -> None:
    with pytest.raises(PostgrestError) as caught:
        await request(pool, catalogue, "GET", query, body=body)
    assert (caught.value.status, caught.value.code) == (400, code)


async def test_bad_body_values_are_clean_400s(pool: asyncpg.Pool, catalogue: Catalogue) -> None:
    for row, code in (
        ({"device_id": str(uuid.uuid4()), "time": "2026-02-01T00:00:00Z", "soe": "lots", "target_power": 1}, "22P02"),
        ({"device_id": str(uuid.uuid4()), "time": "2026-02-01T00:00:00Z", "target_power": 1}, "23502"),
        ({"device_id": str(uuid.uuid4()), "time": "2026-02-01T00:00:00Z", "soe": 101, "target_power": 1}, "23514"),
    ):
        with pytest.raises(PostgrestError) as caught:
            await request(pool, catalogue, "POST", "", body=row)
        assert (caught.value.status, caught.value.code) == (400, code)


async def test_patch_and_delete(pool: asyncpg.Pool, catalogue: Catalogue, device: uuid.UUID) -> None:
    patched = await request(
        pool,
        catalogue,
        "PATCH",
        f"device_id=eq.{device}&soe=gte.70&select=soe,command_source",
        body={"command_source": 5},
        headers={"Prefer": "return=representation"},
    )
    assert patched.status == 200
    assert sorted(row["soe"] for row in json.loads(patched.body or "")) == [70, 90]
    assert {row["command_source"] for row in json.loads(patched.body or "")} == {5}
    deleted = await request(pool, catalogue, "DELETE", f"device_id=eq.{device}&soe=lt.40")
    assert (deleted.status, deleted.headers["Content-Range"]) == (204, "0-1/*")
    remaining = await request(pool, catalogue, "GET", f"device_id=eq.{device}&select=soe&order=soe")
    assert [row["soe"] for row in json.loads(remaining.body or "")] == [50, 70, 90]


async def test_rpc_through_the_parser(pool: asyncpg.Pool, catalogue: Catalogue) -> None:
    meter = uuid.uuid4()
    start = datetime(2026, 2, 2, tzinfo=UTC)
    await pool.executemany(
        "INSERT INTO flux.mg_meter_readings (device_id, time, power_total_active, energy_imported_active)"
        " VALUES ($1, $2, $3, $4)",
        [(meter, start + timedelta(minutes=minute), 100.0, 10.0 * minute) for minute in range(60)],
    )
    body = {
        "start_time": start.isoformat(),
        "end_time": (start + timedelta(hours=1)).isoformat(),
        "device_ids": [str(meter)],
    }
    query = parse_rpc(
        catalogue,
        method="POST",
        function="get_meter_readings_30m",
        query="select=time_b,power_total_active_avg,energy_imported_active_delta",
        headers={},
        body=json.dumps(body).encode(),
    )
    response = await run(pool, catalogue, query)
    assert json.loads(response.body or "") == [
        {"time_b": "2026-02-02T00:00:00+00:00", "power_total_active_avg": 100, "energy_imported_active_delta": 300},
        {"time_b": "2026-02-02T00:30:00+00:00", "power_total_active_avg": 100, "energy_imported_active_delta": 290},
    ]
    filtered = parse_rpc(
        catalogue,
        method="GET",
        function="get_meter_readings_5m",
        query=(
            f"start_time={start.isoformat().replace('+', '%2B')}&device_ids={{{meter}}}"
            "&time_b=gte.2026-02-02T00:50:00Z&select=time_b"
        ),
        headers={},
    )
    assert len(json.loads((await run(pool, catalogue, filtered)).body or "")) == 2
    with pytest.raises(PostgrestError) as unknown:
        parse_rpc(catalogue, method="POST", function="get_meter_readings_5m", query="", headers={}, body=b'{"x": 1}')
    assert (unknown.value.status, unknown.value.code) == (404, "PGRST202")


# --- PostgREST fidelity (probe finding R4): quotes inside values, JSON paths, casts, CSV -------------------


@pytest.fixture
async def site(pool: asyncpg.Pool, catalogue: Catalogue) -> str:
    """A site of three registered devices with awkward names and jsonb metadata (one without)."""
    site = f"T{uuid.uuid4().hex[:12]}"
    rows = [
        {
            "name": f'{site} 19" rack',  # one double quote: PostgREST takes it as an ordinary character
            "type": "bess",
            "site": site,
            "metadata": {
                "max_power_kw": 5000,
                "modbus": {"host": "10.0.0.5", "unit_id": 1},
                "it's": "apostrophe",
                "a\\b": "backslash",
            },
        },
        {"name": f"{site} a,b\nc", "type": "bess", "site": site, "metadata": {"max_power_kw": 250}},
        {"name": f"{site} plain", "type": "meter", "site": site, "metadata": None},
    ]
    response = await request(pool, catalogue, "POST", "", relation="mg_device_registry", body=rows)
    assert response.status == 201
    return site


async def read_registry(pool: asyncpg.Pool, catalogue: Catalogue, query: str) -> list[dict[str, Any]]:
    response = await request(pool, catalogue, "GET", query, relation="mg_device_registry")
    assert response.status == 200
    rows: list[dict[str, Any]] = json.loads(response.body or "")
    return rows


async def test_values_holding_double_quotes_find_their_rows(
    pool: asyncpg.Pool, catalogue: Catalogue, site: str
) -> None:
    quoted, plain = f'{site} 19" rack', f"{site} plain"
    # As postgrest-js sends them (no quoting, no escaping) and as postgrest-py does (quoted, escaped).
    for query, expected in (
        (f"name=in.({quoted},{plain})", [plain, quoted]),
        (f'name=in.("{site} 19\\" rack","{plain}")', [plain, quoted]),
        (f"or=(name.eq.{quoted},name.eq.{plain})", [plain, quoted]),
        (f"name=eq.{quoted}&or=(name.in.({quoted}))", [quoted]),
    ):
        rows = await read_registry(pool, catalogue, f"site=eq.{site}&select=name&order=name&{query}")
        assert sorted(row["name"] for row in rows) == sorted(expected), query


async def test_json_paths_select_filter_and_order(pool: asyncpg.Pool, catalogue: Catalogue, site: str) -> None:
    rows = await read_registry(
        pool,
        catalogue,
        f"site=eq.{site}&select=metadata->>max_power_kw,host:metadata->modbus->>host,metadata->modbus->unit_id"
        "&metadata->>max_power_kw=eq.5000",
    )
    # ->> gives text, -> gives JSON; the last key names the column unless aliased.
    assert rows == [{"max_power_kw": "5000", "host": "10.0.0.5", "unit_id": 1}]
    by_json = await read_registry(pool, catalogue, f"site=eq.{site}&select=type&metadata->max_power_kw=eq.250")
    assert by_json == [{"type": "bess"}]
    ordered = await read_registry(
        pool, catalogue, f"site=eq.{site}&select=power:metadata->max_power_kw&order=metadata->max_power_kw.desc"
    )
    assert ordered == [{"power": None}, {"power": 5000}, {"power": 250}]  # DESC puts nulls first
    in_tree = await read_registry(
        pool,
        catalogue,
        f"site=eq.{site}&select=type&or=(metadata->modbus->>host.like.10.*,metadata->>max_power_kw.is.null)&order=type",
    )
    assert in_tree == [{"type": "bess"}, {"type": "meter"}]
    awkward = await read_registry(
        pool,
        catalogue,
        f'site=eq.{site}&select=q:metadata->>"it\'s",s:metadata->>"a\\\\b"&metadata->>"it\'s"=eq.apostrophe',
    )
    assert awkward == [{"q": "apostrophe", "s": "backslash"}]


async def test_casts_in_select(pool: asyncpg.Pool, catalogue: Catalogue, site: str, device: uuid.UUID) -> None:
    text = await request(
        pool, catalogue, "GET", f"device_id=eq.{device}&select=soe::text,level:soe::int&order=time&limit=2"
    )
    assert json.loads(text.body or "") == [{"soe": "10", "level": 10}, {"soe": "30", "level": 30}]
    numeric = await read_registry(
        pool, catalogue, f"site=eq.{site}&select=metadata->>max_power_kw::numeric&type=eq.meter"
    )
    assert numeric == [{"max_power_kw": None}]
    with pytest.raises(PostgrestError) as not_a_number:
        await read_registry(pool, catalogue, f"site=eq.{site}&select=name::integer")
    assert (not_a_number.value.status, not_a_number.value.code) == (400, "22P02")


async def test_nulls_stripped_leaves_null_values_out(pool: asyncpg.Pool, catalogue: Catalogue, site: str) -> None:
    query = f"site=eq.{site}&select=type,kw:metadata->max_power_kw&order=type&limit=2"
    stripped = await request(
        pool,
        catalogue,
        "GET",
        query + "&type=eq.meter",
        relation="mg_device_registry",
        headers={"Accept": "application/vnd.pgrst.array+json;nulls=stripped"},
    )
    assert json.loads(stripped.body or "") == [{"type": "meter"}]
    kept = await read_registry(pool, catalogue, query + "&type=eq.meter")
    assert kept == [{"type": "meter", "kw": None}]


async def test_csv_body_is_a_header_and_rfc_4180_rows(pool: asyncpg.Pool, catalogue: Catalogue, site: str) -> None:
    await request(
        pool,
        catalogue,
        "PATCH",
        f"site=eq.{site}&type=eq.meter",
        relation="mg_device_registry",
        # The registry's type is one of the device types (a CHECK), so the empty string sits in the metadata.
        body={"metadata": {"label": ""}},
    )
    response = await request(
        pool,
        catalogue,
        "GET",
        f"site=eq.{site}&select=name,type,kw:metadata->max_power_kw,metadata->modbus,label:metadata->>label&order=name",
        relation="mg_device_registry",
        headers={"Accept": "text/csv"},
    )
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    body = response.body or ""
    assert body.split("\n")[0] == "name,type,kw,modbus,label"
    assert list(csv.reader(io.StringIO(body))) == [
        ["name", "type", "kw", "modbus", "label"],
        [f'{site} 19" rack', "bess", "5000", '{"host": "10.0.0.5", "unit_id": 1}', ""],
        [f"{site} a,b\nc", "bess", "250", "", ""],
        [f"{site} plain", "meter", "", "", ""],
    ]
    # An empty string is quoted, a NULL is an empty field; quotes inside a field are doubled.
    assert body.endswith(f'\n{site} plain,meter,,,""')
    assert f'\n"{site} 19"" rack",bess,5000,"{{""host"": ""10.0.0.5"", ""unit_id"": 1}}",\n' in body
    empty = await request(
        pool,
        catalogue,
        "GET",
        "site=eq.nowhere&select=name,site",
        relation="mg_device_registry",
        headers={"Accept": "text/csv"},
    )
    assert (empty.status, empty.body) == (200, "name,site")
