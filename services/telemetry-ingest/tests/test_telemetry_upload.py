"""TelemetryUploader against PostgreSQL and the upstream simulator: format, batching, offline, retries."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from gridloop_simulators.upstream import TELEMETRY_FIELDS, UpstreamSimulator
from telemetry_ingest.upload.uploader import MAX_ITEM_ATTEMPTS, TelemetryUploader, UploadError

from .upload_fixtures import (  # noqa: F401  (fixtures, found by pytest under their names)
    RecordingClock,
    insert_readings,
    register_battery,
    upload_database_url_fixture,
    upload_pool_fixture,
    uploader_fixture,
    upstream_client_fixture,
    upstream_fixture,
)

pytestmark = pytest.mark.connected

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _at(seconds_before_now: float) -> datetime:
    return NOW - timedelta(seconds=seconds_before_now)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _marks(pool: asyncpg.Pool) -> dict[str, tuple[datetime | None, datetime | None]]:
    rows = await pool.fetch(
        "SELECT device.name, mark.uploaded_until, mark.reported_until FROM ingest.telemetry_upload_marks AS mark "
        "JOIN flux.mg_device_registry AS device ON device.id = mark.device_id"
    )
    return {row["name"]: (row["uploaded_until"], row["reported_until"]) for row in rows}


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _accepted_times(upstream: UpstreamSimulator, device: str) -> list[str]:
    return [
        point["oem_raw_data"]["reading_time"]
        for point in upstream.accepted_telemetry
        if point["device_id"] == device and point["last_is_online"]
    ]


async def test_readings_are_uploaded_in_the_documented_format(
    upload_pool: asyncpg.Pool, upstream: UpstreamSimulator, uploader: TelemetryUploader
) -> None:
    device_id = await register_battery(upload_pool, "battery-a", capacity_kwh=10.0)
    await insert_readings(
        upload_pool,
        device_id,
        [(_at(120), 50.0, 2.5), (_at(60), 55.5, -1.2), (_at(0), 54.0, 0.0), (NOW + timedelta(seconds=5), 54.0, 0.0)],
    )

    report = await uploader.upload_once(NOW)

    assert (report.requests, report.accepted, report.failed) == (1, 3, 0)
    [upload] = upstream.telemetry
    assert upload["status_code"] == 200
    assert [result["status"] for result in upload["results"]] == ["OK"] * 3
    first, second, third = upload["points"]
    assert all(set(point) == TELEMETRY_FIELDS for point in upload["points"])  # every attribute is sent
    # No earlier reading: the first point is an instant; energies are zero.
    assert first["start_time"] == _iso(_at(120)) and first["duration_s"] == 0
    assert first["battery_total_energy_charge_wh"] == 0 and first["battery_last_power_charge_w"] == 2500
    assert first["last_mode"] == "CHARGE"
    # kW positive-charging becomes W split by direction; 2.5 kW held for 60 s is 41.667 Wh charged.
    assert second == {
        "start_time": _iso(_at(120)),
        "duration_s": 60.0,
        "device_id": "battery-a",
        "last_is_online": True,
        "last_mode": "DISCHARGE",
        "battery_last_power_charge_w": 0.0,
        "battery_last_power_discharge_w": 1200.0,
        "battery_total_energy_charge_wh": 41.667,
        "battery_total_energy_discharge_wh": 0.0,
        "battery_last_stored_energy_wh": 5550.0,
        "battery_last_capacity_energy_wh": 10000.0,
        "battery_last_backup_reserve_percentage": None,
        "battery_last_state_of_charge_percentage": 55.5,
        "battery_last_state_of_health_percentage": 100.0,
        "last_is_grid_online": True,
        "home_total_energy_wh": 0.0,
        "home_last_power_w": 0.0,
        "solar_total_energy_wh": 0.0,
        "solar_last_power_w": 0.0,
        "oem_raw_data": {"reading_time": _iso(_at(60)), "soe_percent": 55.5, "target_power_kw": pytest.approx(-1.2)},
    }
    assert third["start_time"] == _iso(_at(60)) and third["last_mode"] == "STANDBY"
    assert third["battery_total_energy_discharge_wh"] == 20.0  # 1.2 kW for 60 s
    # The future reading waits for its time; the mark stops at the newest reading sent.
    assert await _marks(upload_pool) == {"battery-a": (NOW, NOW)}

    again = await uploader.upload_once(NOW + timedelta(seconds=30))
    assert again.requests == 1 and again.accepted == 1  # only the reading that has now come due
    assert len(upstream.telemetry) == 2


async def test_more_than_a_thousand_points_are_split_one_request_per_batch(
    upload_pool: asyncpg.Pool, upstream: UpstreamSimulator, uploader: TelemetryUploader
) -> None:
    device_id = await register_battery(upload_pool, "battery-big")
    await upload_pool.execute(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) "
        "SELECT $1::timestamptz - make_interval(secs => step), $2, 50, 1 FROM generate_series(0, 2499) AS step",
        NOW,
        device_id,
    )
    before = _counter("gridloop_telemetry_upload_points_total", status="accepted")

    report = await uploader.upload_once(NOW)

    assert [len(upload["points"]) for upload in upstream.telemetry] == [1000, 1000, 500]
    assert report.requests == 3 and report.accepted == 2500
    assert len(set(_accepted_times(upstream, "battery-big"))) == 2500
    assert _counter("gridloop_telemetry_upload_points_total", status="accepted") - before == 2500
    assert (await _marks(upload_pool))["battery-big"][0] == NOW
    assert (await uploader.upload_once(NOW)).requests == 0  # nothing new, device online: no request


async def test_an_offline_battery_is_reported_with_null_attributes(
    upload_pool: asyncpg.Pool, upstream: UpstreamSimulator, uploader: TelemetryUploader
) -> None:
    quiet = await register_battery(upload_pool, "battery-quiet")
    await register_battery(upload_pool, "battery-never")
    await insert_readings(upload_pool, quiet, [(_at(600), 40.0, 0.0)])

    report = await uploader.upload_once(NOW)

    assert sorted(report.offline_devices) == ["battery-never", "battery-quiet"]
    points = {(point["device_id"], point["last_is_online"]): point for point in upstream.accepted_telemetry}
    assert set(points) == {("battery-quiet", True), ("battery-quiet", False), ("battery-never", False)}
    offline = points[("battery-quiet", False)]
    # The offline span runs from the last reading to now, so the upstream sees no hole.
    assert offline["start_time"] == _iso(_at(600)) and offline["duration_s"] == 600
    assert all(
        offline[field] is None
        for field in TELEMETRY_FIELDS - {"start_time", "duration_s", "device_id", "last_is_online", "oem_raw_data"}
    )
    assert points[("battery-never", False)]["duration_s"] == 60  # one interval, as nothing is known before

    later = NOW + timedelta(seconds=60)
    await uploader.upload_once(later)
    last = upstream.telemetry[-1]["points"]
    assert {(point["device_id"], point["start_time"], point["duration_s"]) for point in last} == {
        ("battery-quiet", _iso(NOW), 60),
        ("battery-never", _iso(NOW), 60),
    }


async def test_upstream_failure_loses_nothing_and_the_mark_moves_only_on_success(
    upload_pool: asyncpg.Pool, upstream: UpstreamSimulator, upstream_client: httpx.AsyncClient
) -> None:
    uploader = TelemetryUploader(pool=upload_pool, client=upstream_client, batch_size=1000, max_batches=1)
    device_id = await register_battery(upload_pool, "battery-f")
    readings = [(_at(1500 - step), 50.0, -0.5) for step in range(1500)]
    await insert_readings(upload_pool, device_id, readings)
    errors_before = _counter("gridloop_telemetry_upload_total", outcome="error")

    upstream.fail_next(1, 503)
    with pytest.raises(UploadError):
        await uploader.upload_once(NOW)
    assert await _marks(upload_pool) == {}
    assert _counter("gridloop_telemetry_upload_total", outcome="error") - errors_before == 1

    first = await uploader.upload_once(NOW)  # one batch per cycle: the first 1,000
    assert first.accepted == 1000
    assert (await _marks(upload_pool))["battery-f"][0] == readings[999][0]

    upstream.fail_for(60, 502)
    with pytest.raises(UploadError):
        await uploader.upload_once(NOW + timedelta(seconds=60))
    assert (await _marks(upload_pool))["battery-f"][0] == readings[999][0]  # unchanged by the failure

    upstream.fail_next(0)
    upstream.fail_for(0)
    await insert_readings(upload_pool, device_id, [(NOW + timedelta(seconds=60), 50.0, 0.0)])
    second = await uploader.upload_once(NOW + timedelta(seconds=120))
    assert second.requests == 1 and second.accepted == 501
    sent = _accepted_times(upstream, "battery-f")
    assert len(sent) == len(set(sent)) == 1501  # every reading once, none lost, none twice
    assert len(upstream.telemetry) == 2  # refused requests were not recorded as received


async def test_points_answered_failed_are_resent_and_given_up_after_the_limit(
    upload_pool: asyncpg.Pool, upstream: UpstreamSimulator, uploader: TelemetryUploader
) -> None:
    good = await register_battery(upload_pool, "battery-good")
    flaky = await register_battery(upload_pool, "battery-flaky")
    await insert_readings(upload_pool, good, [(_at(60 - step), 60.0, 1.0) for step in range(3)])
    await insert_readings(upload_pool, flaky, [(_at(60 - step), 70.0, -1.0) for step in range(3)])
    upstream.reject_telemetry("battery-flaky", 2)

    first = await uploader.upload_once(NOW)
    assert (first.requests, first.accepted, first.failed) == (1, 4, 2)
    # Both devices' marks moved: the refused points are parked, not blocking the device.
    assert {name: mark[0] for name, mark in (await _marks(upload_pool)).items()} == {
        "battery-good": _at(58),
        "battery-flaky": _at(58),
    }

    second = await uploader.upload_once(NOW + timedelta(seconds=1))
    assert (second.requests, second.accepted, second.failed) == (1, 2, 0)
    assert sorted(_accepted_times(upstream, "battery-flaky")) == [_iso(_at(60)), _iso(_at(59)), _iso(_at(58))]
    assert await upload_pool.fetchval("SELECT count(*) FROM ingest.telemetry_upload_retries") == 0

    # A point refused every time is dropped after MAX_ITEM_ATTEMPTS sends instead of retried forever.
    await insert_readings(upload_pool, flaky, [(NOW + timedelta(seconds=2), 70.0, 0.0)])
    upstream.reject_telemetry("battery-flaky", 100)
    dropped = 0
    for attempt in range(MAX_ITEM_ATTEMPTS + 1):
        dropped += (await uploader.upload_once(NOW + timedelta(seconds=3 + attempt))).dropped
    assert dropped == 1
    assert await upload_pool.fetchval("SELECT count(*) FROM ingest.telemetry_upload_retries") == 0


async def test_run_forever_backs_off_on_errors_and_recovers(
    upload_pool: asyncpg.Pool, upstream: UpstreamSimulator, upstream_client: httpx.AsyncClient
) -> None:
    clock = RecordingClock(NOW)
    uploader = TelemetryUploader(pool=upload_pool, client=upstream_client, interval_s=60.0, clock=clock)
    device_id = await register_battery(upload_pool, "battery-r")
    await insert_readings(upload_pool, device_id, [(_at(10), 50.0, 1.0)])
    upstream.fail_next(2, 503)

    task = asyncio.create_task(uploader.run_forever())
    try:
        first_delay = await clock.next_sleep()
        clock.advance(first_delay)
        second_delay = await clock.next_sleep()
        assert 108 <= first_delay <= 132 and 216 <= second_delay <= 264  # 2x, then 4x the interval
        assert upstream.telemetry == []
        clock.advance(second_delay)
        await upstream.wait_for_telemetry(1)
        assert 54 <= await clock.next_sleep() <= 66  # back to the plain interval after a success
        assert _accepted_times(upstream, "battery-r") == [_iso(_at(10))]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("interval_s", [10.0, 60.0, 600.0])
async def test_a_silent_battery_is_reported_within_five_minutes_at_any_interval(
    upload_pool: asyncpg.Pool, upstream: UpstreamSimulator, upstream_client: httpx.AsyncClient, interval_s: float
) -> None:
    clock = RecordingClock(NOW)
    uploader = TelemetryUploader(pool=upload_pool, client=upstream_client, interval_s=interval_s, clock=clock)
    device_id = await register_battery(upload_pool, "battery-silent")
    await insert_readings(upload_pool, device_id, [(NOW, 50.0, 0.0)])  # its last reading; silent after it

    task = asyncio.create_task(uploader.run_forever())
    try:
        await clock.next_sleep()
        report_times: list[datetime] = []
        requests_seen = 0
        while clock.now() < NOW + timedelta(minutes=16):
            for upload in upstream.telemetry[requests_seen:]:
                assert upload["status_code"] == 200
                if any(point["device_id"] == "battery-silent" for point in upload["points"]):
                    report_times.append(clock.now())  # the pass that sent it ran at this (fake) time
            requests_seen = len(upstream.telemetry)
            clock.advance(clock.sleeps[-1])
            await clock.next_sleep()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert report_times[0] == NOW  # the reading itself
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(report_times)]
    assert len(gaps) >= 3
    assert max(gaps) < 300, gaps
    # Silent since its reading: every later report is an offline one, and together they leave no hole.
    offline = [point for point in upstream.accepted_telemetry if not point["last_is_online"]]
    assert offline[0]["start_time"] == _iso(NOW)
    for earlier, later in itertools.pairwise(offline):
        end = datetime.fromisoformat(earlier["start_time"]) + timedelta(seconds=earlier["duration_s"])
        assert datetime.fromisoformat(later["start_time"]) == end


async def test_the_simulator_checks_points_as_the_origin_documents(
    upstream: UpstreamSimulator, upstream_client: httpx.AsyncClient
) -> None:
    online: dict[str, Any] = {
        "start_time": "2026-03-02T11:59:00Z",
        "duration_s": 60,
        "device_id": "battery-x",
        "last_is_online": True,
        "last_mode": "CHARGE",
        "battery_last_power_charge_w": 1000,
        "battery_last_power_discharge_w": 0,
        "battery_total_energy_charge_wh": 16.7,
        "battery_total_energy_discharge_wh": 0,
        "battery_last_stored_energy_wh": 5000,
        "battery_last_capacity_energy_wh": 10000,
        "battery_last_state_of_charge_percentage": 50,
        "battery_last_state_of_health_percentage": 98,
        "last_is_grid_online": True,
        "home_total_energy_wh": 0,
        "home_last_power_w": 0,
        "solar_total_energy_wh": 0,
        "solar_last_power_w": 0,
    }
    offline_with_a_value = {**online, "last_is_online": False, "last_mode": None}
    missing_an_attribute = {key: value for key, value in online.items() if key != "solar_last_power_w"}
    negative = {**online, "battery_last_power_charge_w": -5}
    url = "/v1/telemetry/BATTERY"

    response = await upstream_client.post(
        url, json={"telemetry": [online, offline_with_a_value, missing_an_attribute, negative]}
    )

    assert response.status_code == 200
    assert [result["status"] for result in response.json()] == ["OK", "FAILED", "FAILED", "FAILED"]
    assert "battery_last_power_charge_w" in response.json()[1]["message"]
    assert (await upstream_client.post(url, json={"telemetry": [online] * 1001})).status_code == 422
    assert (await upstream_client.post(url, json=[online])).status_code == 400
    unauthenticated = await upstream_client.post(url, json={"telemetry": [online]}, headers={"Authorization": ""})
    assert unauthenticated.status_code == 401
    recorded = (await upstream_client.get("/_sim/telemetry")).json()
    assert [upload["status_code"] for upload in recorded] == [200, 422, 400]
    assert upstream.accepted_telemetry == [online]


async def test_a_battery_whose_metadata_the_contract_refuses_is_reported_and_its_readings_wait(
    upload_pool: asyncpg.Pool,
    upstream: UpstreamSimulator,
    uploader: TelemetryUploader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with upload_pool.acquire() as connection, connection.transaction():
        # Written past telemetry-ingest's contract trigger (migration 0019), as a row older than it is.
        await connection.execute("SET LOCAL session_replication_role = replica")
        refused = await connection.fetchval(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', 'TEST', $2)"
            " RETURNING id",
            "battery-unhealthy",
            {"capacity_kwh": 10, "state_of_health_percentage": 150},
        )
    healthy = await register_battery(upload_pool, "battery-healthy", capacity_kwh=10.0)
    for device_id in (refused, healthy):
        await insert_readings(upload_pool, device_id, [(_at(60), 50.0, 1.0), (_at(0), 51.0, 1.0)])

    report = await uploader.upload_once(NOW)

    assert report.accepted == 2
    assert {point["device_id"] for point in upstream.accepted_telemetry} == {"battery-healthy"}  # not 100 % guessed
    assert [
        record.__dict__["reason"]
        for record in caplog.records
        if record.getMessage() == "battery's registry metadata refused; its readings wait"
    ] == ["invalid registry metadata: metadata.state_of_health_percentage: Input should be less than or equal to 100"]
