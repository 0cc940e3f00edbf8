"""The meter RPCs: the rows of a plain query over the rollups, and a LIMIT above them bounds their work.

The RPCs read each bucket's energy deltas from the rollups, where the refresh stores them. The reference here is
a plain query over the stored buckets: each bucket in the window with its nearest stored neighbours of the same
meter and width, its deltas computed by flux.interpolated_delta. Every row, value and the order must be the same.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url
from .api_fixtures import headers_for, key

pytestmark = pytest.mark.connected

BASE = datetime(2026, 5, 4, 0, 0, tzinfo=UTC)  # a bucket boundary of both widths, apart from other tests' data
SERVICE = key("service_role")
COLUMNS = (
    "device_id",
    "time",
    "frequency",
    "power_total_active",
    "energy_imported_active",
    "energy_exported_active",
    "energy_imported_reactive",
)


_AVERAGES = (
    "frequency",
    "voltage_line_average",
    "current_phase_a",
    "current_phase_b",
    "current_phase_c",
    "current_phase_average",
    "power_phase_a_active",
    "power_phase_b_active",
    "power_phase_c_active",
    "power_total_active",
    "power_total_reactive",
    "power_total_apparent",
    "power_factor_total",
)
_COUNTERS = tuple(
    f"energy_{direction}_{quantity}"
    for quantity in ("active", "phase_a_active", "phase_b_active", "phase_c_active", "reactive", "apparent")
    for direction in ("imported", "exported")
)
_MINIMA = _COUNTERS[:8]  # the RPC reports the minimum of the active counters only


def _reference_query() -> str:
    """The RPC's rows for ($1 width, $2 start, $3 end, $4 device ids or NULL), from the stored buckets."""
    averages = [f"bucket.{name}_avg" for name in _AVERAGES]
    minima = [f"(bucket.{name}).minimum::real" for name in _MINIMA]
    deltas = [
        f"flux.interpolated_delta(bucket.{name}, bucket.time_b, make_interval(mins => $1),"
        f" previous.{name}, following.{name})"
        for name in _COUNTERS
    ]
    return f"""
        SELECT bucket.time_b, bucket.device_id, {", ".join(averages + minima + deltas)}
        FROM flux.meter_reading_rollups AS bucket
        LEFT JOIN LATERAL (
            SELECT neighbour.* FROM flux.meter_reading_rollups AS neighbour
            WHERE neighbour.bucket_minutes = bucket.bucket_minutes AND neighbour.device_id = bucket.device_id
                AND neighbour.time_b < bucket.time_b
            ORDER BY neighbour.time_b DESC LIMIT 1
        ) AS previous ON true
        LEFT JOIN LATERAL (
            SELECT neighbour.* FROM flux.meter_reading_rollups AS neighbour
            WHERE neighbour.bucket_minutes = bucket.bucket_minutes AND neighbour.device_id = bucket.device_id
                AND neighbour.time_b > bucket.time_b
            ORDER BY neighbour.time_b LIMIT 1
        ) AS following ON true
        WHERE bucket.bucket_minutes = $1 AND bucket.time_b BETWEEN $2 AND $3
            AND ($4::uuid[] IS NULL OR bucket.device_id = ANY ($4::uuid[]))
        ORDER BY bucket.time_b, bucket.device_id
    """


def _readings(device: uuid.UUID, minutes: list[float], *, reset_at: float | None = None) -> list[tuple[Any, ...]]:
    """Readings at the given minutes after BASE; the exported counter drops to 1 at ``reset_at`` (a reset)."""
    rows = []
    for minute in minutes:
        exported = 50.0 + 0.25 * minute if reset_at is None or minute < reset_at else 1.0 + 0.25 * (minute - reset_at)
        rows.append(
            (
                device,
                BASE + timedelta(minutes=minute),
                50.0 + (minute % 7) / 100,
                10.0 + minute % 13,
                100.0 + 0.5 * minute,
                exported,
                20.0 + 0.125 * minute,
            )
        )
    return rows


@pytest.fixture
async def meters(pool: asyncpg.Pool) -> AsyncIterator[list[uuid.UUID]]:
    """Four meters around BASE: one with a 2-hour gap, one irregular with a reset, one reading, one before."""
    gappy, irregular, single, before = (uuid.uuid4() for _ in range(4))
    rows = (
        _readings(gappy, [2.0 * index for index in range(60)] + [240.0 + 2.0 * index for index in range(60)])
        + _readings(irregular, [7.0 * index + 3 for index in range(50)], reset_at=150.0)
        + _readings(single, [95.5])
        + _readings(before, [-400.0 + 10 * index for index in range(20)])
    )
    await pool.executemany(
        f"INSERT INTO flux.mg_meter_readings ({', '.join(COLUMNS)})"
        f" VALUES ({', '.join(f'${index}' for index in range(1, len(COLUMNS) + 1))})",
        rows,
    )
    meters = [gappy, irregular, single, before]
    yield meters
    await pool.execute("DELETE FROM flux.mg_meter_readings WHERE device_id = ANY ($1)", meters)


async def test_rpc_rows_are_those_of_the_plain_reference_query(pool: asyncpg.Pool, meters: list[uuid.UUID]) -> None:
    gappy, irregular, single, before = meters
    unknown = uuid.uuid4()
    windows: list[tuple[datetime, datetime, list[uuid.UUID] | None]] = [
        (BASE - timedelta(days=1), BASE + timedelta(days=1), meters),
        (BASE + timedelta(minutes=13), BASE + timedelta(hours=4, minutes=7), [gappy, irregular]),
        (BASE + timedelta(minutes=30), BASE + timedelta(hours=3), [irregular, gappy, irregular]),  # duplicate id
        (BASE + timedelta(hours=2, minutes=10), BASE + timedelta(hours=3, minutes=50), [gappy]),  # inside the gap
        (BASE + timedelta(hours=5), BASE + timedelta(days=3), [gappy, single, unknown]),  # past the end
        (BASE - timedelta(hours=8), BASE - timedelta(hours=1), [before, gappy]),  # before the others
        (BASE + timedelta(hours=3), BASE + timedelta(hours=1), meters),  # inverted: no rows
        (BASE, BASE + timedelta(hours=6), []),
        (BASE, BASE + timedelta(hours=6), [unknown]),
        (BASE - timedelta(hours=2), BASE + timedelta(hours=6), None),  # every meter, other tests' ones included
    ]
    async with pool.acquire() as connection:
        compared = 0
        for width in (5, 30):
            for start, end, devices in windows:
                rows = await connection.fetch(
                    f"SELECT * FROM flux.get_meter_readings_{width}m($1, $2, $3)", start, end, devices
                )
                expected = await connection.fetch(_reference_query(), width, start, end, devices)
                assert [tuple(row) for row in rows] == [tuple(row) for row in expected], (width, start, end, devices)
                compared += len(rows)
        assert compared > 300  # the windows hold rows, with deltas on both sides of the gap and of the reset


async def test_limit_and_offset_over_the_rpc_give_the_rows_of_the_whole_result(
    pool: asyncpg.Pool, meters: list[uuid.UUID]
) -> None:
    arguments = (BASE - timedelta(hours=1), BASE + timedelta(hours=7), meters)
    whole = [tuple(row) for row in await pool.fetch("SELECT * FROM flux.get_meter_readings_5m($1, $2, $3)", *arguments)]
    assert len(whole) > 90
    for limit, offset in ((1, 0), (7, 0), (10, 3), (25, 40), (1000, 0), (5, len(whole) - 2), (5, len(whole) + 5)):
        page = await pool.fetch(
            f"SELECT * FROM flux.get_meter_readings_5m($1, $2, $3) LIMIT {limit} OFFSET {offset}", *arguments
        )
        assert [tuple(row) for row in page] == whole[offset : offset + limit], (limit, offset)
    assert await pool.fetchval("SELECT count(*) FROM flux.get_meter_readings_5m($1, $2, $3)", *arguments) == len(whole)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def test_the_rpc_is_inlined_and_a_limit_stops_it_early(pool: asyncpg.Pool, meters: list[uuid.UUID]) -> None:
    gappy, irregular = meters[:2]
    arguments = (BASE, BASE + timedelta(hours=6), [gappy, irregular])
    times = [
        row[0] for row in await pool.fetch("SELECT time_b FROM flux.get_meter_readings_5m($1, $2, $3)", *arguments)
    ]
    assert len(times) > 80

    def periods_up_to(row: int) -> int:
        """How many 5-minute bucket periods lie from the first row's to the given row's (both included)."""
        return int((times[row] - times[0]) / timedelta(minutes=5)) + 1

    async def periods_read(limit: str) -> int:
        explained = await pool.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM flux.get_meter_readings_5m($1, $2, $3) LIMIT {limit}",
            *arguments,
        )
        nodes = _nodes((json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"])
        # Inlined: no function scan of the RPC or of meter_reading_buckets, whose result would be computed whole.
        assert not [node for node in nodes if node["Node Type"] == "Function Scan" and "meter" in node["Function Name"]]
        # The buckets are read period by period, not every bucket of the window at once, and their stored deltas
        # need no lookup of their neighbours.
        assert not [node for node in nodes if node.get("Alias") in ("previous", "following")]
        read = [node for node in nodes if node.get("Alias") == "bucket"]
        assert len(read) == 1 and read[0]["Relation Name"] == "meter_reading_rollups"
        loops: int = read[0]["Actual Loops"]
        return loops

    # LIMIT n: the periods of the n rows and the next one (the sort above needs to see the next period start).
    assert await periods_read("3") <= periods_up_to(2) + 1
    assert await periods_read("40") <= periods_up_to(39) + 1
    assert await periods_read("ALL") == periods_up_to(len(times) - 1)


@pytest.fixture
async def long_meter(pool: asyncpg.Pool) -> AsyncIterator[tuple[uuid.UUID, datetime, datetime]]:
    """One meter with a reading every 5 minutes for 90 hours: 1,080 five-minute buckets, more than the row cap."""
    device = uuid.uuid4()
    start = BASE + timedelta(days=10)
    await pool.execute(
        "INSERT INTO flux.mg_meter_readings (device_id, time, power_total_active, energy_imported_active)"
        " SELECT $1, $2::timestamptz + make_interval(mins => 5 * step), 3.0 + step % 11, 0.75 * step"
        " FROM generate_series(0, 1079) AS step",
        device,
        start,
    )
    yield device, start, start + timedelta(hours=90)
    await pool.execute("DELETE FROM flux.mg_meter_readings WHERE device_id = $1", device)


async def test_rpc_over_http_pages_and_counts_as_postgrest(
    api_url: str, pool: asyncpg.Pool, long_meter: tuple[uuid.UUID, datetime, datetime]
) -> None:
    device, start, end = long_meter
    # The whole result as PostgreSQL's JSON, as the API builds it.
    whole = json.loads(
        await pool.fetchval(
            "SELECT json_agg(rpc)::text FROM flux.get_meter_readings_5m($1, $2, $3) AS rpc", start, end, [device]
        )
    )
    assert len(whole) == 1080
    body = {"start_time": start.isoformat(), "end_time": end.isoformat(), "device_ids": [str(device)]}

    async with httpx.AsyncClient(base_url=f"{api_url}/rest/v1", headers=headers_for(SERVICE)) as client:

        async def call(params: dict[str, str] | None = None, **headers: str) -> httpx.Response:
            return await client.post("/rpc/get_meter_readings_5m", params=params, json=body, headers=headers)

        capped = await call()
        assert (capped.status_code, capped.headers["Content-Range"]) == (200, "0-999/*")
        assert capped.json() == whole[:1000]  # the db-max-rows cap: the first 1,000 rows
        counted = await call(Prefer="count=exact")
        assert (counted.status_code, counted.headers["Content-Range"]) == (206, "0-999/1080")
        assert counted.json() == whole[:1000]
        rest = await call(Prefer="count=exact", Range="1000-1999")
        assert (rest.status_code, rest.headers["Content-Range"], rest.json()) == (206, "1000-1079/1080", whole[1000:])
        page = await call({"limit": "5", "offset": "998"})
        assert (page.status_code, page.headers["Content-Range"], page.json()) == (200, "998-1002/*", whole[998:1003])
        latest = await call({"order": "time_b.desc", "limit": "2", "select": "time_b,energy_imported_active_delta"})
        assert latest.json() == [
            {"time_b": row["time_b"], "energy_imported_active_delta": row["energy_imported_active_delta"]}
            for row in (whole[-1], whole[-2])
        ]
        filtered = await call({"time_b": f"gte.{whole[500]['time_b']}", "limit": "3"}, Prefer="count=exact")
        assert (filtered.status_code, filtered.headers["Content-Range"]) == (206, "0-2/580")
        assert filtered.json() == whole[500:503]
        beyond = await call(Prefer="count=exact", Range="2000-2009")
        assert (beyond.status_code, beyond.json()["code"]) == (416, "PGRST103")
