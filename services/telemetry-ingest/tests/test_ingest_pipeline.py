"""The readings pipeline against the real broker and database: partial dead-lettering, idempotence, freshness."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from gridloop_common.contracts import BessReading, routing
from gridloop_common.messaging import DEAD_LETTER_REASON_HEADER
from telemetry_ingest.api.auth import Authenticator, issue_key
from telemetry_ingest.api.device_status import DeviceFreshness, device_status_route
from telemetry_ingest.ingest.repository import ReadingKind, ReadingsRepository
from telemetry_ingest.upkeep.rollups import RollupRefresher

from .pipeline_fixtures import (  # noqa: F401  (fixtures, found by pytest under their names)
    JWT_SECRET,
    DeadLetters,
    HandledMessages,
    broker_fixture,
    dead_letters_fixture,
    ingest_consumer_fixture,
    publish_batch_fixture,
    repository_fixture,
)

pytestmark = pytest.mark.connected

PublishBatch = Callable[[str, list[object], str], Awaitable[None]]


def _meter_reading(device: uuid.UUID, moment: datetime, power_kw: float, imported_kwh: float) -> dict[str, object]:
    return {
        "time": moment.isoformat(),
        "device_id": str(device),
        "power_total_active": power_kw,
        "energy_imported_active": imported_kwh,
        "frequency": 50.0,
    }


async def test_a_malformed_reading_is_dead_lettered_alone_and_redelivery_adds_nothing(
    pool: asyncpg.Pool,
    ingest_consumer: HandledMessages,
    dead_letters: DeadLetters,
    publish_batch: PublishBatch,
) -> None:
    device = uuid.uuid4()
    start = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    readings: list[object] = [
        _meter_reading(device, start, 1.5, 100.0),
        _meter_reading(device, start + timedelta(seconds=5), "lots", 100.1),  # type: ignore[arg-type]
        _meter_reading(device, start + timedelta(seconds=10), 2.5, 100.2),
        _meter_reading(device, start + timedelta(seconds=15), -0.5, 100.3),
    ]
    message_id = f"batch-{uuid.uuid4()}"

    await publish_batch(routing.RoutingKeys.TELEMETRY_METER, readings, message_id)
    await ingest_consumer.wait_for(message_id)

    rows = await pool.fetch(
        "SELECT time, power_total_active FROM flux.mg_meter_readings WHERE device_id = $1 ORDER BY time", device
    )
    assert [(row["time"], row["power_total_active"]) for row in rows] == [
        (start, 1.5),
        (start + timedelta(seconds=10), 2.5),
        (start + timedelta(seconds=15), -0.5),
    ]
    rejected = await dead_letters.find(f"{message_id}:1")
    reason = str((rejected.headers or {})[DEAD_LETTER_REASON_HEADER])
    assert "power_total_active" in reason
    assert b'"lots"' in rejected.body
    assert (rejected.headers or {})["x-gridloop-original-routing-key"] == routing.RoutingKeys.TELEMETRY_METER

    # Bulk ingest defers rollups to the refresher: nothing yet, then the right figures after one pass.
    rollup_query = (
        "SELECT reading_count, power_total_active_avg FROM flux.meter_reading_rollups"
        " WHERE device_id = $1 AND bucket_minutes = 5"
    )
    assert await pool.fetchrow(rollup_query, device) is None
    assert await RollupRefresher(pool=pool).refresh_once() >= 1
    rollup = await pool.fetchrow(rollup_query, device)
    assert rollup is not None
    assert rollup["reading_count"] == 3
    assert rollup["power_total_active_avg"] == 3.5 / 3

    # The same message again (a redelivery after a lost ack): no duplicates, rollups unchanged.
    await publish_batch(routing.RoutingKeys.TELEMETRY_METER, readings, message_id)
    await ingest_consumer.wait_for(message_id, times=2)
    await RollupRefresher(pool=pool).refresh_once()
    assert await pool.fetchval("SELECT count(*) FROM flux.mg_meter_readings WHERE device_id = $1", device) == 3
    assert (
        await pool.fetchval(
            "SELECT reading_count FROM flux.meter_reading_rollups WHERE device_id = $1 AND bucket_minutes = 30",
            device,
        )
        == 3
    )


async def test_bess_batch_rejects_an_out_of_range_soe_and_keeps_the_rest(
    pool: asyncpg.Pool,
    ingest_consumer: HandledMessages,
    dead_letters: DeadLetters,
    publish_batch: PublishBatch,
) -> None:
    devices = [uuid.uuid4(), uuid.uuid4()]
    moment = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    readings: list[object] = [
        {"time": moment.isoformat(), "device_id": str(devices[0]), "soe": 65.5, "target_power": -25.0,
         "available_inverter_blocks": 4, "command_source": 1},
        {"time": moment.isoformat(), "device_id": str(devices[1]), "soe": 150.0, "target_power": 3.0},
        {"time": moment.isoformat(), "device_id": str(devices[1]), "soe": 20.0, "target_power": 1e39},
    ]  # fmt: skip
    message_id = f"batch-{uuid.uuid4()}"

    await publish_batch(routing.RoutingKeys.TELEMETRY_BESS, readings, message_id)
    await ingest_consumer.wait_for(message_id)

    rows = await pool.fetch(
        "SELECT device_id, soe, target_power, available_inverter_blocks, command_source"
        " FROM flux.mg_bess_readings WHERE device_id = ANY($1::uuid[])",
        devices,
    )
    assert [dict(row) for row in rows] == [
        {
            "device_id": devices[0],
            "soe": 65.5,
            "target_power": -25.0,
            "available_inverter_blocks": 4,
            "command_source": 1,
        }
    ]
    too_full = await dead_letters.find(f"{message_id}:1")
    assert "soe" in str((too_full.headers or {})[DEAD_LETTER_REASON_HEADER])
    too_big = await dead_letters.find(f"{message_id}:2")
    assert "does not fit a real column" in str((too_big.headers or {})[DEAD_LETTER_REASON_HEADER])


async def test_a_stale_device_shows_in_the_status_route_and_the_gauge(
    pool: asyncpg.Pool, repository: ReadingsRepository
) -> None:
    fresh, stale, silent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    suffix = uuid.uuid4().hex[:8]
    await pool.executemany(
        "INSERT INTO flux.mg_device_registry (id, name, type, site) VALUES ($1, $2, $3, 'TEST')",
        [(fresh, f"fresh-{suffix}", "bess"), (stale, f"stale-{suffix}", "meter"), (silent, f"silent-{suffix}", "bess")],
    )
    now = datetime.now(UTC)
    fresh_time = now - timedelta(seconds=2)
    stale_time = now - timedelta(minutes=10)
    await repository.insert(
        ReadingKind.BESS, [BessReading(time=fresh_time, device_id=fresh, soe=50.0, target_power=0.0)]
    )
    # The stale device's reading was stored by "another replica": only the database knows it.
    await pool.execute(
        "INSERT INTO flux.mg_meter_readings (time, device_id, power_total_active) VALUES ($1, $2, 1.0)",
        stale_time,
        stale,
    )

    freshness = DeviceFreshness(pool, repository, poll_interval_s=5.0)
    app = Starlette(routes=[device_status_route(freshness, authenticator=Authenticator(JWT_SECRET))])
    service_key = issue_key(JWT_SECRET, "service_role")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
        response = await client.get("/status/devices", headers={"apikey": service_key})
        # It names every device: no key, a bad key, the anon or an authenticated key are refused (M4).
        refusals = [
            await client.get("/status/devices"),
            await client.get("/status/devices", headers={"apikey": issue_key("another-secret-" * 3, "service_role")}),
            await client.get("/status/devices", headers={"apikey": issue_key(JWT_SECRET, "anon")}),
            await client.get("/status/devices", headers={"apikey": issue_key(JWT_SECRET, "authenticated")}),
        ]
    assert [(refusal.status_code, refusal.json()["code"]) for refusal in refusals] == [
        (401, "PGRST302"),
        (401, "PGRST301"),
        (401, "42501"),
        (403, "42501"),
    ]
    assert response.status_code == 200
    by_device = {item["device"]: item for item in response.json()}
    assert by_device[str(fresh)]["stale"] is False
    assert by_device[str(fresh)]["name"] == f"fresh-{suffix}"
    assert 0 <= by_device[str(fresh)]["age_s"] < freshness.stale_after_s
    assert by_device[str(stale)]["stale"] is True
    assert datetime.fromisoformat(by_device[str(stale)]["last_reading_at"]) == stale_time
    assert by_device[str(stale)]["age_s"] >= 600
    assert by_device[str(silent)] == {
        "device": str(silent),
        "name": f"silent-{suffix}",
        "last_reading_at": None,
        "age_s": None,
        "stale": True,
    }
    stale_ids = {status.device for status in await freshness.stale_devices()}
    assert {str(stale), str(silent)} <= stale_ids
    assert str(fresh) not in stale_ids

    gauge = "gridloop_device_last_reading_timestamp_seconds"
    assert REGISTRY.get_sample_value(gauge, {"device": str(fresh)}) == fresh_time.timestamp()
    assert REGISTRY.get_sample_value(gauge, {"device": str(stale)}) == stale_time.timestamp()


async def test_a_reading_is_stored_alike_whether_its_batch_takes_the_fast_or_the_careful_path(
    pool: asyncpg.Pool,
    ingest_consumer: HandledMessages,
    dead_letters: DeadLetters,
    publish_batch: PublishBatch,
) -> None:
    fast_device, careful_device, lax_device, upper_device = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # Seven fractional digits: rounded to the microsecond (as PostgreSQL rounds), on both paths.
    moment = "2026-03-02T12:00:00.9999996Z"
    fast_batch: list[object] = [{"time": moment, "device_id": str(fast_device), "frequency": 50.0}]
    careful_batch: list[object] = [
        {"time": moment, "device_id": str(careful_device), "frequency": 50.0},
        {"time": moment, "device_id": str(lax_device), "frequency": "49.5"},  # a number in a string: the model's
        {"time": moment, "device_id": "not-a-device", "frequency": 50.0},
        # The fast path takes only the canonical spelling of an id; the model takes this one too.
        {"time": moment, "device_id": str(upper_device).upper(), "frequency": 50.0},
    ]
    fast_id, careful_id = f"batch-{uuid.uuid4()}", f"batch-{uuid.uuid4()}"

    await publish_batch(routing.RoutingKeys.TELEMETRY_METER, fast_batch, fast_id)
    await publish_batch(routing.RoutingKeys.TELEMETRY_METER, careful_batch, careful_id)
    await ingest_consumer.wait_for(fast_id)
    await ingest_consumer.wait_for(careful_id)

    rows = await pool.fetch(
        "SELECT device_id, time, frequency FROM flux.mg_meter_readings WHERE device_id = ANY($1::uuid[])",
        [fast_device, careful_device, lax_device, upper_device],
    )
    stored = {row["device_id"]: (row["time"], row["frequency"]) for row in rows}
    rounded = datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC)
    assert stored[fast_device] == (rounded, 50.0)
    assert stored[careful_device] == (rounded, 50.0)
    # The model accepts "49.5" and truncates the extra digit; the struct refused the item, so the model decided.
    truncated = datetime(2026, 3, 2, 12, 0, 0, 999999, tzinfo=UTC)
    assert stored[lax_device] == (truncated, 49.5)
    assert stored[upper_device] == (truncated, 50.0)  # the model decided this one too
    # Whichever path and spelling, the freshness gauge is labelled with the id's canonical text.
    gauge = "gridloop_device_last_reading_timestamp_seconds"
    for device, latest in ((fast_device, rounded), (careful_device, rounded), (upper_device, truncated)):
        assert REGISTRY.get_sample_value(gauge, {"device": str(device)}) == latest.timestamp()
    assert REGISTRY.get_sample_value(gauge, {"device": str(upper_device).upper()}) is None
    rejected = await dead_letters.find(f"{careful_id}:2")
    assert "device_id" in str((rejected.headers or {})[DEAD_LETTER_REASON_HEADER])


async def test_a_charger_reporting_once_a_minute_is_not_stale_where_a_polled_battery_would_be(
    pool: asyncpg.Pool, repository: ReadingsRepository
) -> None:
    charger, battery = uuid.uuid4(), uuid.uuid4()
    suffix = uuid.uuid4().hex[:8]
    await pool.executemany(
        "INSERT INTO flux.mg_device_registry (id, name, type, site) VALUES ($1, $2, $3, 'TEST')",
        [(charger, f"charger-{suffix}", "electric_vehicle_v1g"), (battery, f"battery-{suffix}", "bess")],
    )
    # Both last reported 40 s ago: one of a charger's minute-long report intervals, eight battery polls.
    forty_seconds_ago = datetime.now(UTC) - timedelta(seconds=40)
    await pool.execute(
        "INSERT INTO flux.mg_ev_charger_readings (time, device_id, power_kw) VALUES ($1, $2, 7.4)",
        forty_seconds_ago,
        charger,
    )
    await pool.execute(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES ($1, $2, 50, 0)",
        forty_seconds_ago,
        battery,
    )

    freshness = DeviceFreshness(pool, repository, poll_interval_s=5.0, charger_report_interval_s=60.0)
    by_name = {status.name: status for status in await freshness.device_status()}

    assert by_name[f"charger-{suffix}"].stale is False
    assert by_name[f"battery-{suffix}"].stale is True
    assert freshness.stale_after_for("electric_vehicle_v1g") == 180.0 and freshness.stale_after_for("bess") == 15.0
