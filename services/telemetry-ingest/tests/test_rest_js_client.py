"""The Flux REST API with supabase-js itself (node, pinned in tests/js): probe finding R4 and a broad smoke.

Each call is built and sent by supabase-js (tests/js/rest_calls.mjs applies the listed builder methods), so
what is asserted is what an application using supabase-js gets: ``data``, ``error``, ``count``, ``status``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url
from .api_fixtures import key
from .js_clients import NodeClients, NodeProcess, node_clients_fixture  # noqa: F401  (fixture, found by its name)

pytestmark = pytest.mark.connected

SERVICE = key("service_role")
AUTHENTICATED = key("authenticated", sub=str(uuid.uuid4()))
ANON = key("anon")
BASE = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


class SupabaseJs:
    """supabase-js in node: ``await supabase.table(KEY, "table", ("select", "name"), ("eq", "site", x))``."""

    def __init__(self, node: NodeProcess) -> None:
        self._node = node

    async def table(self, api_key: str, table: str, *chain: tuple[Any, ...]) -> dict[str, Any]:
        await self._node.send({"key": api_key, "from": table, "chain": [list(step) for step in chain]})
        return await self._node.json_line()

    async def rpc(
        self, api_key: str, function: str, arguments: dict[str, Any], *chain: tuple[Any, ...], **options: Any
    ) -> dict[str, Any]:
        await self._node.send(
            {"key": api_key, "rpc": [function, arguments, options], "chain": [list(step) for step in chain]}
        )
        return await self._node.json_line()


@pytest.fixture
async def supabase(api_url: str, node_clients: NodeClients) -> AsyncIterator[SupabaseJs]:
    async with node_clients("rest_calls.mjs", url=api_url, anon_key=ANON) as node:
        yield SupabaseJs(node)


def ok(response: dict[str, Any], status: int = 200) -> Any:
    """The response's data, after checking supabase-js saw no error and the status expected."""
    assert (response["error"], response["status"]) == (None, status), response
    return response["data"]


def refused(response: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    """The error supabase-js returned, after checking its status and code (and that no data came with it)."""
    assert (response["status"], response["data"]) == (status, None), response
    error: dict[str, Any] = response["error"]
    assert error["code"] == code, response
    return error


async def register(supabase: SupabaseJs, devices: list[dict[str, Any]]) -> None:
    inserted = await supabase.table(SERVICE, "mg_device_registry", ("insert", devices), ("select", "name"))
    assert sorted(row["name"] for row in ok(inserted, 201)) == sorted(device["name"] for device in devices)


def a_site() -> str:
    return f"js{uuid.uuid4().hex[:10]}"


async def test_in_and_or_find_values_holding_a_double_quote(supabase: SupabaseJs) -> None:
    """R4: postgrest-js sends ``in.(… 19" rack,…)`` and ``or=(name.eq.… 19" rack,…)`` with the quote as it is."""
    site = a_site()
    rack, plain, comma, other = f'{site} 19" rack', f"{site} plain", f"{site} 4,5 kW", f"{site} other"
    await register(supabase, [{"name": name, "type": "bess", "site": site} for name in (rack, plain, comma, other)])

    def names(rows: list[dict[str, Any]]) -> list[str]:
        return [row["name"] for row in rows]

    found = await supabase.table(ANON, "mg_device_registry", ("select", "name"), ("in", "name", [rack, plain]))
    assert sorted(names(ok(found))) == sorted([rack, plain])
    either = await supabase.table(
        ANON, "mg_device_registry", ("select", "name"), ("or", f"name.eq.{rack},name.eq.{plain}"), ("order", "name")
    )
    assert names(ok(either)) == sorted([rack, plain])
    # A value with a comma is the one postgrest-js quotes: "… 4,5 kW".
    quoted = await supabase.table(ANON, "mg_device_registry", ("select", "name"), ("in", "name", [comma, rack]))
    assert sorted(names(ok(quoted))) == sorted([comma, rack])
    rest = await supabase.table(
        ANON, "mg_device_registry", ("select", "name"), ("eq", "site", site), ("notIn", "name", [rack, comma])
    )
    assert sorted(names(ok(rest))) == sorted([plain, other])
    # The quote inside an or=() condition's in.() list, and negated.
    nested = await supabase.table(
        ANON,
        "mg_device_registry",
        ("select", "name"),
        ("eq", "site", site),
        ("or", f"name.in.({rack},{other}),name.eq.{plain}"),
        ("not", "name", "eq", other),
    )
    assert sorted(names(ok(nested))) == sorted([rack, plain])


async def test_csv_is_postgrest_csv_and_other_media_types_are_406(supabase: SupabaseJs) -> None:
    """R4: ``.csv()`` gets PostgREST's CSV; an Accept the API does not offer is 406 PGRST107 in supabase-js."""
    site = a_site()
    await register(
        supabase,
        [
            {"name": f'{site} 19" rack', "type": "bess", "site": site, "metadata": {"max_power_kw": 5000}},
            {"name": f"{site} meter", "type": "meter", "site": site, "active": False},
        ],
    )
    table = await supabase.table(
        SERVICE,
        "mg_device_registry",
        ("select", "name,type,active,metadata->>max_power_kw"),
        ("eq", "site", site),
        ("order", "name"),
        ("csv",),
    )
    # Header row of the output names, then a row per line; the quote doubled inside a quoted field, NULL empty.
    assert ok(table) == f'name,type,active,max_power_kw\n"{site} 19"" rack",bess,true,5000\n{site} meter,meter,false,'
    empty = await supabase.table(
        SERVICE, "mg_device_registry", ("select", "name,site"), ("eq", "site", f"{site}-none"), ("csv",)
    )
    assert ok(empty) == "name,site"  # the header row also when there are no rows

    mine = (("select", "name"), ("eq", "site", site))
    for accept, chain in [
        ("application/geo+json", (("geojson",),)),
        # EXPLAIN plans (PostgREST's db-plan-enabled) are not offered; the message names the type without its
        # parameters (PostgREST would add `; for="application/json"`).
        ("application/vnd.pgrst.plan+text", (("explain",),)),
        ("application/xml", (("setHeader", "Accept", "application/xml"),)),
    ]:
        error = refused(await supabase.table(ANON, "mg_device_registry", *mine, *chain), 406, "PGRST107")
        assert error == {
            "code": "PGRST107",
            "details": None,
            "hint": None,
            "message": f"None of these media types are available: {accept}",
        }
    thrown = await supabase.table(ANON, "mg_device_registry", *mine, ("geojson",), ("throwOnError",))
    assert thrown["thrown"] == {
        "name": "PostgrestError",
        "code": "PGRST107",
        "message": "None of these media types are available: application/geo+json",
        "details": None,
        "hint": None,
    }


async def test_json_paths_in_select_filters_and_order_and_casts(supabase: SupabaseJs) -> None:
    """R4: ``metadata->>max_power_kw`` and ``metadata->modbus->>host`` in select, eq and order; ``soe::text``."""
    site = a_site()
    await register(
        supabase,
        [
            {
                "name": f"{site} big",
                "type": "bess",
                "site": site,
                "metadata": {"max_power_kw": 5000, "modbus": {"host": "10.0.0.5", "port": 502}},
            },
            {
                "name": f"{site} small",
                "type": "bess",
                "site": site,
                "metadata": {"max_power_kw": 80, "modbus": {"host": "10.0.0.6", "port": 1502}},
            },
            {"name": f"{site} meter", "type": "meter", "site": site, "metadata": {"max_power_kw": 250}},
        ],
    )
    paths = ("select", "name, kw:metadata->>max_power_kw, metadata->modbus->>host")
    listed = await supabase.table(SERVICE, "mg_device_registry", paths, ("eq", "site", site), ("order", "name"))
    assert ok(listed) == [
        {"name": f"{site} big", "kw": "5000", "host": "10.0.0.5"},
        {"name": f"{site} meter", "kw": "250", "host": None},
        {"name": f"{site} small", "kw": "80", "host": "10.0.0.6"},
    ]
    filtered = await supabase.table(
        SERVICE, "mg_device_registry", paths, ("eq", "site", site), ("eq", "metadata->>max_power_kw", "5000")
    )
    assert ok(filtered) == [{"name": f"{site} big", "kw": "5000", "host": "10.0.0.5"}]
    nested = await supabase.table(
        SERVICE,
        "mg_device_registry",
        ("select", "name"),
        ("eq", "site", site),
        ("gte", "metadata->modbus->port", 1000),
    )
    assert ok(nested) == [{"name": f"{site} small"}]

    async def order(*steps: tuple[Any, ...]) -> list[str]:
        rows = await supabase.table(SERVICE, "mg_device_registry", ("select", "name"), ("eq", "site", site), *steps)
        return [row["name"].removeprefix(f"{site} ") for row in ok(rows)]

    # ->> is text, ordered as text ("250" < "5000" < "80"); -> is jsonb, numbers ordered as numbers.
    assert await order(("order", "metadata->>max_power_kw")) == ["meter", "big", "small"]
    assert await order(("order", "metadata->max_power_kw", {"ascending": False})) == ["big", "meter", "small"]

    device = str(uuid.uuid4())
    reading = {"device_id": device, "time": BASE.isoformat(), "soe": 42.5, "target_power": -1.25}
    ok(await supabase.table(SERVICE, "mg_bess_readings", ("insert", reading)), 201)
    cast = await supabase.table(
        ANON, "mg_bess_readings", ("select", "soe::text, power:target_power::text"), ("eq", "device_id", device)
    )
    assert ok(cast) == [{"soe": "42.5", "power": "-1.25"}]
    kilowatts = await supabase.table(
        SERVICE,
        "mg_device_registry",
        ("select", "kw:metadata->>max_power_kw::int"),
        ("eq", "site", site),
        ("order", "metadata->max_power_kw"),
    )
    assert ok(kilowatts) == [{"kw": 80}, {"kw": 250}, {"kw": 5000}]
    unknown = await supabase.table(ANON, "mg_bess_readings", ("select", "soe::regclass"), ("eq", "device_id", device))
    refused(unknown, 400, "42704")


async def test_anon_cannot_read_registry_metadata_but_service_role_can(supabase: SupabaseJs) -> None:
    site = a_site()
    modbus = {"host": "10.9.8.7", "port": 502, "unit_id": 3}
    await register(supabase, [{"name": f"{site} bess", "type": "bess", "site": site, "metadata": {"modbus": modbus}}])
    denied = {
        "code": "42501",
        "details": None,
        "hint": None,
        "message": "permission denied for table mg_device_registry",
    }
    for chain in [
        (("select", "*"), ("eq", "site", site)),
        (("select", "name, metadata"), ("eq", "site", site)),
        (("select", "name, metadata->modbus->>host"), ("eq", "site", site)),
        (("select", "name"), ("eq", "metadata->modbus->>host", "10.9.8.7")),
        (("select", "name"), ("eq", "site", site), ("order", "metadata->modbus->>host")),
    ]:
        assert refused(await supabase.table(ANON, "mg_device_registry", *chain), 401, "42501") == denied
    thrown = await supabase.table(ANON, "mg_device_registry", ("select", "*"), ("throwOnError",))
    assert thrown["thrown"] == {"name": "PostgrestError", **denied}
    public = await supabase.table(
        ANON, "mg_device_registry", ("select", "name, type, site, active"), ("eq", "site", site)
    )
    assert ok(public) == [{"name": f"{site} bess", "type": "bess", "site": site, "active": True}]
    for api_key in (SERVICE, AUTHENTICATED):
        private = await supabase.table(
            api_key,
            "mg_device_registry",
            ("select", "name, metadata, host:metadata->modbus->>host"),
            ("eq", "site", site),
        )
        assert ok(private) == [{"name": f"{site} bess", "metadata": {"modbus": modbus}, "host": "10.9.8.7"}]


def readings(device: str, soes: tuple[float, ...] = (10, 30, 50, 70, 90)) -> list[dict[str, Any]]:
    """Battery readings a minute apart; command_source is the index, null on the last one."""
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


async def test_a_broad_smoke_of_supabase_js_rest_calls(supabase: SupabaseJs, pool: asyncpg.Pool) -> None:
    """The calls applications make, each with its result: the probe found 47 of 48 passing; keep all passing."""
    device = str(uuid.uuid4())
    bess = "mg_bess_readings"
    mine = ("eq", "device_id", device)

    async def soes(*chain: tuple[Any, ...], api_key: str = ANON) -> list[float]:
        return [row["soe"] for row in ok(await supabase.table(api_key, bess, ("select", "soe"), mine, *chain))]

    # insert: representation back, one statement for the batch; minimal with an exact count.
    inserted = ok(await supabase.table(SERVICE, bess, ("insert", readings(device)[:4]), ("select",)), 201)
    assert [row["soe"] for row in inserted] == [10, 30, 50, 70]
    assert all(uuid.UUID(row["id"]) and row["device_id"] == device for row in inserted)
    assert inserted[1]["time"] == (BASE + timedelta(minutes=1)).isoformat()
    minimal = await supabase.table(AUTHENTICATED, bess, ("insert", readings(device)[4:], {"count": "exact"}))
    assert (minimal["data"], minimal["error"], minimal["status"], minimal["count"]) == (None, None, 201, 1)
    refused(await supabase.table(ANON, bess, ("insert", readings(device)[0])), 401, "42501")
    refused(await supabase.table(SERVICE, bess, ("insert", readings(device)[0])), 409, "23505")
    refused(await supabase.table(SERVICE, bess, ("insert", {**readings(device)[0], "soe": 101})), 400, "23514")

    # count exact, head, ranges.
    head = await supabase.table(ANON, bess, ("select", "*", {"count": "exact", "head": True}), mine)
    assert (head["data"], head["error"], head["count"], head["status"]) == (None, None, 5, 200)
    page = await supabase.table(
        ANON, bess, ("select", "soe", {"count": "exact"}), mine, ("order", "time"), ("range", 1, 2)
    )
    assert (ok(page, 206), page["count"]) == ([{"soe": 30}, {"soe": 50}], 5)
    beyond = await supabase.table(ANON, bess, ("select", "soe", {"count": "exact"}), mine, ("range", 10, 12))
    refused(beyond, 416, "PGRST103")

    # filters and modifiers.
    assert await soes(("gt", "soe", 40), ("order", "soe")) == [50, 70, 90]
    assert await soes(("gte", "soe", 50), ("lte", "soe", 70), ("order", "soe")) == [50, 70]
    assert await soes(("lt", "soe", 40), ("neq", "soe", 10)) == [30]
    assert await soes(("in", "soe", [10, 90]), ("order", "soe")) == [10, 90]
    assert await soes(("is", "command_source", None)) == [90]
    assert await soes(("not", "command_source", "is", None), ("order", "soe")) == [10, 30, 50, 70]
    assert await soes(("not", "soe", "in", "(10,90)"), ("order", "soe")) == [30, 50, 70]
    assert await soes(("or", "soe.lt.20,soe.gt.80"), ("order", "soe")) == [10, 90]
    assert await soes(("or", "soe.eq.30,and(soe.gt.60,command_source.eq.3)"), ("order", "soe")) == [30, 70]
    assert await soes(("filter", "command_source", "gte", 2), ("order", "soe")) == [50, 70]
    assert await soes(("match", {"command_source": 1})) == [30]
    assert await soes(("order", "soe", {"ascending": False}), ("limit", 2)) == [90, 70]
    assert await soes(("order", "command_source", {"ascending": False, "nullsFirst": True}), ("limit", 2)) == [90, 70]
    assert await soes(("order", "time"), ("range", 3, 4)) == [70, 90]
    like = await supabase.table(
        ANON, "market_data_types", ("select", "name"), ("like", "name", "%price"), ("order", "id")
    )
    assert ok(like) == [{"name": "wholesale_price"}, {"name": "imbalance_price"}]
    ilike = await supabase.table(ANON, "market_data_types", ("select", "id"), ("ilike", "name", "NIV%"))
    assert ok(ilike) == [{"id": 1}]
    stripped = await supabase.table(
        ANON, bess, ("select", "soe,command_source"), mine, ("gte", "soe", 70), ("order", "soe"), ("stripNulls",)
    )
    assert ok(stripped) == [{"soe": 70, "command_source": 3}, {"soe": 90}]

    # single / maybeSingle.
    single = await supabase.table(ANON, bess, ("select", "soe,command_source"), mine, ("eq", "soe", 50), ("single",))
    assert ok(single) == {"soe": 50, "command_source": 2}
    refused(await supabase.table(ANON, bess, ("select", "soe"), mine, ("single",)), 406, "PGRST116")
    refused(await supabase.table(ANON, bess, ("select", "soe"), mine, ("eq", "soe", 55), ("single",)), 406, "PGRST116")
    assert ok(await supabase.table(ANON, bess, ("select", "soe"), mine, ("eq", "soe", 55), ("maybeSingle",))) is None
    maybe = await supabase.table(ANON, bess, ("select", "soe"), mine, ("eq", "soe", 90), ("maybeSingle",))
    assert ok(maybe) == {"soe": 90}
    refused(await supabase.table(ANON, bess, ("select", "soe"), mine, ("maybeSingle",)), 406, "PGRST116")

    # upsert: merge on the unique key, or ignore.
    first = {"device_id": device, "time": BASE.isoformat(), "soe": 15, "target_power": 1.5}
    merged = await supabase.table(
        SERVICE, bess, ("upsert", first, {"onConflict": "device_id,time"}), ("select", "soe,target_power")
    )
    assert ok(merged, 201) == [{"soe": 15, "target_power": 1.5}]
    ignored = await supabase.table(
        SERVICE,
        bess,
        ("upsert", [{**first, "soe": 99}], {"onConflict": "device_id,time", "ignoreDuplicates": True}),
        ("select", "soe"),
    )
    assert ok(ignored, 201) == []
    assert await soes(("order", "time"), ("limit", 1)) == [15]
    registry_site = a_site()
    device_row = {"name": f"{registry_site} upserted", "type": "bess", "site": registry_site}
    registered = await supabase.table(
        SERVICE, "mg_device_registry", ("upsert", device_row, {"onConflict": "name"}), ("select", "name,active")
    )
    assert ok(registered, 201) == [{"name": device_row["name"], "active": True}]
    again = await supabase.table(
        SERVICE,
        "mg_device_registry",
        ("upsert", {**device_row, "active": False}, {"onConflict": "name"}),
        ("select", "name,active"),
    )
    assert ok(again, 201) == [{"name": device_row["name"], "active": False}]
    # A bulk upsert whose rows name different columns (postgrest-js sends their union as `columns`), with
    # defaultToNull off (Prefer: missing=default): a column a row leaves out takes its default, and a column no
    # row names (active) is not touched in the row that was there.
    bulk = await supabase.table(
        SERVICE,
        "mg_device_registry",
        (
            "upsert",
            [{**device_row, "metadata": {"max_power_kw": 5}}, {**device_row, "name": f"{registry_site} second"}],
            {"onConflict": "name", "defaultToNull": False},
        ),
        ("select", "name,active,metadata"),
    )
    assert sorted(ok(bulk, 201), key=lambda row: row["name"]) == [
        {"name": f"{registry_site} second", "active": True, "metadata": None},
        {"name": device_row["name"], "active": False, "metadata": {"max_power_kw": 5}},
    ]

    # update / delete with filters; neither without one; neither with a key lacking the privilege.
    updated = await supabase.table(
        SERVICE, bess, ("update", {"command_source": 5}), mine, ("gte", "soe", 70), ("select", "soe,command_source")
    )
    assert sorted(map(json.dumps, ok(updated))) == sorted(
        map(json.dumps, [{"soe": 70, "command_source": 5}, {"soe": 90, "command_source": 5}])
    )
    counted = await supabase.table(SERVICE, bess, ("update", {"target_power": 0}, {"count": "exact"}), mine)
    assert (counted["error"], counted["status"], counted["count"]) == (None, 204, 5)
    refused(await supabase.table(SERVICE, bess, ("update", {"command_source": 1})), 400, "21000")
    refused(await supabase.table(AUTHENTICATED, bess, ("update", {"command_source": 1}), mine), 403, "42501")
    refused(await supabase.table(ANON, bess, ("delete",), mine), 401, "42501")
    refused(await supabase.table(SERVICE, bess, ("delete",)), 400, "21000")
    deleted = await supabase.table(SERVICE, bess, ("delete",), mine, ("lt", "soe", 40), ("select", "soe"))
    assert sorted(row["soe"] for row in ok(deleted)) == [15, 30]
    gone = await supabase.table(SERVICE, bess, ("delete", {"count": "exact"}), mine, ("eq", "soe", 50))
    assert (gone["error"], gone["status"], gone["count"]) == (None, 204, 1)
    assert await soes(("order", "soe")) == [70, 90]
    assert await soes(("order", "soe"), api_key=SERVICE) == [70, 90]

    # rpc get_meter_readings_5m, POST and GET, with select/order/count; the same rows as the function in SQL.
    meter = str(uuid.uuid4())
    start = BASE + timedelta(days=1)
    meter_rows = [
        {
            "device_id": meter,
            "time": (start + timedelta(minutes=minute)).isoformat(),
            "power_total_active": 100.0 + minute % 5,
            "energy_imported_active": 10.0 * minute,
        }
        for minute in range(60)
    ]
    ok(await supabase.table(SERVICE, "mg_meter_readings", ("insert", meter_rows)), 201)
    end = start + timedelta(hours=1)
    window = {"start_time": start.isoformat(), "end_time": end.isoformat(), "device_ids": [meter]}
    expected = json.loads(
        await pool.fetchval(
            "SELECT json_agg(rpc ORDER BY time_b)::text FROM flux.get_meter_readings_5m($1, $2, $3) AS rpc",
            start,
            end,
            [uuid.UUID(meter)],
        )
    )
    assert len(expected) == 12 and {row["power_total_active_avg"] for row in expected} == {102}
    whole = await supabase.rpc(ANON, "get_meter_readings_5m", window, ("order", "time_b"))
    assert ok(whole) == expected
    columns = "time_b,power_total_active_avg,energy_imported_active_delta"
    latest = await supabase.rpc(
        ANON,
        "get_meter_readings_5m",
        window,
        ("select", columns),
        ("order", "time_b", {"ascending": False}),
        ("limit", 2),
    )
    assert ok(latest) == [{name: row[name] for name in columns.split(",")} for row in reversed(expected[-2:])]
    read_only = await supabase.rpc(
        ANON, "get_meter_readings_5m", window, ("select", "time_b"), ("gte", "time_b", expected[6]["time_b"]), get=True
    )
    assert ok(read_only) == [{"time_b": row["time_b"]} for row in expected[6:]]
    how_many = await supabase.rpc(ANON, "get_meter_readings_5m", window, head=True, count="exact")
    assert (how_many["data"], how_many["error"], how_many["count"]) == (None, None, 12)
    one = await supabase.rpc(
        ANON, "get_meter_readings_5m", window, ("eq", "time_b", expected[0]["time_b"]), ("single",)
    )
    assert ok(one) == expected[0]
    nothing = await supabase.rpc(SERVICE, "get_meter_readings_5m", {**window, "device_ids": [str(uuid.uuid4())]})
    assert ok(nothing) == []
    refused(await supabase.rpc(ANON, "get_meter_readings_5m", {"device": meter}), 404, "PGRST202")
    refused(await supabase.rpc(ANON, "no_such_function", {}), 404, "PGRST202")
    refused(await supabase.table(ANON, "no_such_table", ("select", "*")), 404, "PGRST205")
    refused(await supabase.table(ANON, bess, ("select", "no_such_column"), mine), 400, "42703")
