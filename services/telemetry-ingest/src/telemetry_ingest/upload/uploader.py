"""Battery telemetry upstream: flux readings to POST {upstream}/v1/telemetry/BATTERY, resumable and retried."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from prometheus_client import Counter

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import DeviceMetadata, InvalidDeviceMetadata

__all__ = ["TELEMETRY_PATH", "TelemetryUploader", "UploadError", "UploadReport", "next_report_due", "report_due"]

logger = logging.getLogger(__name__)

TELEMETRY_PATH = "/v1/telemetry/BATTERY"
MAX_POINTS_PER_REQUEST = 1000  # the upstream's documented limit
# The upstream wants every device at least every five minutes; a battery silent for longer is offline.
OFFLINE_AFTER = timedelta(minutes=5)
# A battery silent since its last report is reported offline this long before its five minutes are up,
# and the uploader wakes up for it then whatever its interval: the pass and its request must land inside
# the five minutes (reporting only once they were up sent the report at 300.6 s at a 10 s interval).
REPORT_LEAD = timedelta(seconds=30)
# Some programmes need 30 days of history before enrolment; nothing older is sent.
BACKFILL = timedelta(days=30)
# A point the upstream keeps answering FAILED is given up after this many sends (the upstream's "bad apple").
MAX_ITEM_ATTEMPTS = 5
MAX_BACKOFF_INTERVALS = 10
MAX_RETRY_AFTER_S = 900.0
# One uploader per database at a time: two replicas would send every point twice.
_LOCK_KEY = 0x676C_7570_6C64 & 0x7FFF_FFFF_FFFF_FFFF  # "glupld"

UPLOADS = Counter(
    "gridloop_telemetry_upload_total",
    "POST /v1/telemetry/BATTERY requests, by outcome (ok, partial, rejected, error).",
    ["outcome"],
)
UPLOAD_POINTS = Counter(
    "gridloop_telemetry_upload_points_total",
    "Telemetry points sent upstream, by the upstream's answer (accepted, failed) or dropped after retries.",
    ["status"],
)

_DEVICES = """
SELECT device.id, device.name, device.metadata, mark.uploaded_until, mark.reported_until,
       latest.time AS latest_reading
FROM flux.mg_device_registry AS device
LEFT JOIN ingest.telemetry_upload_marks AS mark ON mark.device_id = device.id
LEFT JOIN LATERAL (
    SELECT reading.time FROM flux.mg_bess_readings AS reading
    WHERE reading.device_id = device.id AND reading.time <= $1
    ORDER BY reading.time DESC LIMIT 1
) AS latest ON true
WHERE device.active AND device.type = 'bess'
ORDER BY mark.reported_until ASC NULLS FIRST, device.name  -- least recently reported first, so a
                                                           -- backlog larger than one cycle rotates
"""


def _previous(gap_parameter: str) -> str:
    """The reading before each ``reading`` within the gap, which bounds its interval: a target power holds
    until the next reading replaces it, so the previous reading's power is what flowed meanwhile."""
    return f"""
LEFT JOIN LATERAL (
    SELECT earlier.time, earlier.target_power FROM flux.mg_bess_readings AS earlier
    WHERE earlier.device_id = reading.device_id AND earlier.time < reading.time
      AND earlier.time >= reading.time - {gap_parameter}::interval
    ORDER BY earlier.time DESC LIMIT 1
) AS previous ON true
"""


_PENDING = f"""
SELECT reading.device_id, reading.time, reading.soe, reading.target_power,
       previous.time AS previous_time, previous.target_power AS previous_power
FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS device(id, after, position)
CROSS JOIN LATERAL (
    SELECT * FROM flux.mg_bess_readings AS candidate
    WHERE candidate.device_id = device.id AND candidate.time > device.after AND candidate.time <= $3
    ORDER BY candidate.time LIMIT $5
) AS reading
{_previous("$4")}
ORDER BY device.position, reading.time
LIMIT $5
"""

_RETRIES = f"""
SELECT retry.device_id, retry.reading_time, retry.attempts, reading.time, reading.soe, reading.target_power,
       previous.time AS previous_time, previous.target_power AS previous_power
FROM ingest.telemetry_upload_retries AS retry
LEFT JOIN flux.mg_bess_readings AS reading
       ON reading.device_id = retry.device_id AND reading.time = retry.reading_time
{_previous("$3")}
WHERE retry.device_id = ANY($1::uuid[]) AND retry.attempts < $2
ORDER BY retry.reading_time
LIMIT $4
"""

_ADVANCE_MARKS = """
INSERT INTO ingest.telemetry_upload_marks AS mark (device_id, uploaded_until, reported_until)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
ON CONFLICT (device_id) DO UPDATE SET
    uploaded_until = GREATEST(mark.uploaded_until, EXCLUDED.uploaded_until),  -- GREATEST skips NULLs
    reported_until = GREATEST(mark.reported_until, EXCLUDED.reported_until),
    updated_at = now()
"""

_PARK = """
INSERT INTO ingest.telemetry_upload_retries AS retry (device_id, reading_time, attempts, last_error)
VALUES ($1, $2, $3, $4)
ON CONFLICT (device_id, reading_time) DO UPDATE SET
    attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, updated_at = now()
"""

_UNPARK = "DELETE FROM ingest.telemetry_upload_retries WHERE device_id = $1 AND reading_time = $2"


class UploadError(Exception):
    """An upload request failed as a whole; nothing of it was recorded as accepted."""

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclasses.dataclass
class UploadReport:
    """What one ``upload_once`` did."""

    requests: int = 0
    accepted: int = 0
    failed: int = 0
    dropped: int = 0
    offline_devices: list[str] = dataclasses.field(default_factory=list)
    locked_out: bool = False  # another replica was uploading; nothing was sent
    # When the next pass must run for some battery to be reported in time; None when none is known.
    next_report_due: datetime | None = None


@dataclasses.dataclass(frozen=True)
class _Device:
    id: UUID
    name: str
    capacity_wh: float | None
    state_of_health_percentage: float
    metadata_problem: str | None  # why the registry's metadata was refused (the DeviceMetadata contract)
    uploaded_until: datetime | None
    reported_until: datetime | None
    latest_reading: datetime | None


@dataclasses.dataclass(frozen=True)
class _Point:
    device_id: UUID
    end: datetime
    body: dict[str, Any]
    reading_time: datetime | None = None  # None for an offline point
    attempts: int = 0  # earlier sends that came back FAILED; 0 for a fresh point


class TelemetryUploader:
    """Every ``interval_s``, sends each active battery's new readings (and offline points) upstream.

    Progress is a per-device high-water mark in ``ingest.telemetry_upload_marks`` that moves only after
    the upstream answered; points it answers FAILED are parked and resent up to ``MAX_ITEM_ATTEMPTS``
    times. Request failures back off exponentially (up to ten intervals) and never end ``run_forever``.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        client: httpx.AsyncClient,
        interval_s: float = 60.0,
        batch_size: int = MAX_POINTS_PER_REQUEST,
        max_batches: int = 10,
        clock: Clock | None = None,
        path: str = TELEMETRY_PATH,
    ) -> None:
        if not 1 <= batch_size <= MAX_POINTS_PER_REQUEST:
            raise ValueError(f"batch_size must be 1 to {MAX_POINTS_PER_REQUEST}")
        if interval_s <= 0 or max_batches < 1:
            raise ValueError("interval_s must be positive and max_batches at least 1")
        self._pool = pool
        self._client = client
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._max_batches = max_batches
        self._clock: Clock = clock or SystemClock()
        self._path = path

    async def run_forever(self) -> None:
        """Upload, sleep, repeat until cancelled; errors are logged, counted and backed off from."""
        failures = 0
        while True:
            retry_after_s = 0.0
            next_report_due: datetime | None = None
            try:
                report = await self.upload_once(self._clock.now())
            except UploadError as error:
                failures += 1
                retry_after_s = error.retry_after_s
                logger.warning(
                    "telemetry upload failed; backing off", extra={"error": str(error), "failures": failures}
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
                failures += 1
                logger.warning(
                    "telemetry upload could not use the database; backing off",
                    extra={"error": f"{type(error).__name__}: {error}", "failures": failures},
                )
            except Exception:
                # A bug must not stop the uploader for good; it is logged with its traceback and retried.
                failures += 1
                logger.exception("telemetry upload crashed; backing off", extra={"failures": failures})
            else:
                failures = 0
                next_report_due = report.next_report_due
                if report.requests:
                    logger.info(
                        "telemetry uploaded",
                        extra={
                            "requests": report.requests,
                            "accepted": report.accepted,
                            "failed": report.failed,
                            "offline": len(report.offline_devices),
                        },
                    )
            delay = self._next_delay(failures, retry_after_s)
            if not failures and next_report_due is not None:
                # A battery due for its five-minute report is not left waiting for a long interval. The
                # floor keeps a report the upstream keeps refusing from being resent in a tight loop.
                until_due = (next_report_due - self._clock.now()).total_seconds()
                delay = min(delay, max(until_due, min(self._interval_s, REPORT_LEAD.total_seconds() / 2)))
            await self._clock.sleep(delay)

    def _next_delay(self, failures: int, retry_after_s: float) -> float:
        factor = min(2**failures, MAX_BACKOFF_INTERVALS) if failures else 1
        # Jitter keeps a fleet of replicas restarted together from uploading in lockstep.
        delay = self._interval_s * factor * random.uniform(0.9, 1.1)
        return max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))

    async def upload_once(self, now: datetime) -> UploadReport:
        """One upload cycle as of ``now``; raises UploadError when a request fails (earlier ones stay)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        async with self._pool.acquire() as connection:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
                return UploadReport(locked_out=True)
            try:
                return await self._upload(connection, now)
            finally:
                try:
                    await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    # The original error matters more. The pool sends no reset on release, so end the
                    # session: the lock must not outlive this cycle on a pooled connection.
                    connection.terminate()

    async def _upload(self, connection: asyncpg.Connection, now: datetime) -> UploadReport:
        report = UploadReport()
        devices = [_device(row) for row in await connection.fetch(_DEVICES, now)]
        if not devices:
            return report
        budget = self._batch_size * self._max_batches
        points = await self._fresh_points(connection, devices, now, budget)
        points += await self._retry_points(connection, devices, budget - len(points))
        points += self._offline_points(devices, now, report)
        reported = {device.id: device.reported_until for device in devices}
        for start in range(0, len(points), self._batch_size):
            batch = points[start : start + self._batch_size]
            results = await self._send(batch)
            report.requests += 1
            for device_id, end in await self._record(connection, batch, results, report):
                reported[device_id] = max(end, reported[device_id] or end)
        report.next_report_due = next_report_due(reported.values())
        return report

    async def _fresh_points(
        self, connection: asyncpg.Connection, devices: Sequence[_Device], now: datetime, budget: int
    ) -> list[_Point]:
        if budget <= 0:
            return []
        uploadable = [device for device in devices if device.capacity_wh is not None]
        for device in devices:
            if device.metadata_problem is not None:
                logger.warning(
                    "battery's registry metadata refused; its readings wait",
                    extra={"device": device.name, "reason": device.metadata_problem},
                )
            elif device.capacity_wh is None:
                # Without a capacity no online point is complete, and the upstream refuses incomplete ones.
                logger.warning(
                    "battery has no capacity_kwh in its metadata; its readings wait", extra={"device": device.name}
                )
        floor = now - BACKFILL
        after = [max(device.uploaded_until or floor, floor) for device in uploadable]
        rows = await connection.fetch(_PENDING, [device.id for device in uploadable], after, now, OFFLINE_AFTER, budget)
        by_id = {device.id: device for device in uploadable}
        return [_reading_point(by_id[row["device_id"]], row, attempts=0) for row in rows]

    async def _retry_points(
        self, connection: asyncpg.Connection, devices: Sequence[_Device], budget: int
    ) -> list[_Point]:
        if budget <= 0:
            return []
        by_id = {device.id: device for device in devices if device.capacity_wh is not None}
        rows = await connection.fetch(_RETRIES, list(by_id), MAX_ITEM_ATTEMPTS, OFFLINE_AFTER, budget)
        points: list[_Point] = []
        for row in rows:
            if row["time"] is None:
                # The reading is gone (retention); there is nothing left to resend.
                await connection.execute(_UNPARK, row["device_id"], row["reading_time"])
                continue
            points.append(_reading_point(by_id[row["device_id"]], row, attempts=row["attempts"]))
        return points

    def _offline_points(self, devices: Sequence[_Device], now: datetime, report: UploadReport) -> list[_Point]:
        points: list[_Point] = []
        for device in devices:
            silent = device.latest_reading is None or now - device.latest_reading >= OFFLINE_AFTER
            if not silent and not report_due(device.reported_until, device.latest_reading, now):
                continue
            # The offline span starts where the last report (or reading) ended, so coverage has no gap.
            known = [moment for moment in (device.reported_until, device.latest_reading) if moment is not None]
            start = max(known) if known else now - timedelta(seconds=self._interval_s)
            if start >= now:
                continue
            points.append(_Point(device_id=device.id, end=now, body=_offline_body(device, start, now)))
            report.offline_devices.append(device.name)
        return points

    async def _send(self, batch: Sequence[_Point]) -> list[tuple[bool, str]]:
        try:
            response = await self._client.post(self._path, json={"telemetry": [point.body for point in batch]})
        except httpx.HTTPError as error:
            UPLOADS.labels("error").inc()
            raise UploadError(f"POST {self._path} failed: {type(error).__name__}: {error}") from error
        if response.status_code == 429 or response.status_code >= 500:
            UPLOADS.labels("error").inc()
            raise UploadError(
                f"POST {self._path} answered {response.status_code}: {response.text[:200]}",
                retry_after_s=_retry_after_s(response.headers.get("retry-after")),
            )
        if not response.is_success:
            # Auth or a body the upstream refuses as a whole: retrying is right (a token can be fixed, a
            # bug deployed away), but an operator has to look, hence its own outcome.
            UPLOADS.labels("rejected").inc()
            raise UploadError(f"POST {self._path} answered {response.status_code}: {response.text[:200]}")
        try:
            results = _results(response.json(), len(batch))
        except ValueError as error:
            UPLOADS.labels("error").inc()
            raise UploadError(f"POST {self._path} answered 200 with an unreadable body: {error}") from error
        UPLOADS.labels("ok" if all(accepted for accepted, _ in results) else "partial").inc()
        return results

    async def _record(
        self,
        connection: asyncpg.Connection,
        batch: Sequence[_Point],
        results: Sequence[tuple[bool, str]],
        report: UploadReport,
    ) -> list[tuple[UUID, datetime]]:
        """Settle the batch's points; returns the end of each device's newest accepted point."""
        uploaded: dict[UUID, datetime] = {}
        reported: dict[UUID, datetime] = {}
        parks: list[tuple[UUID, datetime, int, str]] = []
        unparks: list[tuple[UUID, datetime]] = []
        dropped = 0
        for point, (accepted, message) in zip(batch, results, strict=True):
            if accepted:
                report.accepted += 1
                reported[point.device_id] = max(point.end, reported.get(point.device_id, point.end))
            else:
                report.failed += 1
                logger.warning("upstream refused a telemetry point", extra={"point": point.body, "error": message})
            if point.reading_time is None:
                continue  # a refused offline point is not kept: the next cycle reports the span afresh
            if point.attempts == 0:
                # A fresh reading is settled either way: accepted, or parked below for resending.
                uploaded[point.device_id] = max(point.reading_time, uploaded.get(point.device_id, point.reading_time))
            if accepted:
                if point.attempts:
                    unparks.append((point.device_id, point.reading_time))
            elif point.attempts + 1 >= MAX_ITEM_ATTEMPTS:
                dropped += 1
                unparks.append((point.device_id, point.reading_time))
                logger.error(
                    "telemetry point given up after repeated FAILED answers",
                    extra={"point": point.body, "attempts": point.attempts + 1, "error": message},
                )
            else:
                parks.append((point.device_id, point.reading_time, point.attempts + 1, message[:500]))
        device_ids = sorted(set(uploaded) | set(reported))
        async with connection.transaction():
            await connection.execute(
                _ADVANCE_MARKS,
                device_ids,
                [uploaded.get(device_id) for device_id in device_ids],
                [reported.get(device_id) for device_id in device_ids],
            )
            if parks:
                await connection.executemany(_PARK, parks)
            if unparks:
                await connection.executemany(_UNPARK, unparks)
        UPLOAD_POINTS.labels("accepted").inc(sum(1 for accepted, _ in results if accepted))
        UPLOAD_POINTS.labels("failed").inc(sum(1 for accepted, _ in results if not accepted))
        UPLOAD_POINTS.labels("dropped").inc(dropped)
        report.dropped += dropped
        return list(reported.items())


def report_due(reported_until: datetime | None, latest_reading: datetime | None, now: datetime) -> bool:
    """Is a battery with nothing new since its last report due for an offline report at ``now``?

    Only a battery silent since that report is: one with readings not yet reported is reported by them.
    """
    if reported_until is None or (latest_reading is not None and latest_reading > reported_until):
        return False
    return now >= reported_until + OFFLINE_AFTER - REPORT_LEAD


def next_report_due(last_reports: Iterable[datetime | None]) -> datetime | None:
    """The earliest moment one of these batteries (by the end of its last accepted point) is due again."""
    known = [last for last in last_reports if last is not None]
    return min(known) + OFFLINE_AFTER - REPORT_LEAD if known else None


def _device(row: Mapping[str, Any]) -> _Device:
    try:
        metadata, problem = DeviceMetadata.from_registry(row["metadata"]), None
    except InvalidDeviceMetadata as error:
        metadata, problem = DeviceMetadata(), error.reason  # no capacity: its readings wait, reported
    health = metadata.state_of_health_percentage
    return _Device(
        id=row["id"],
        name=row["name"],
        capacity_wh=metadata.capacity_wh,
        # flux records no state of health and the upstream refuses a null one for an online point:
        # a registry value wins, otherwise the battery is reported as healthy.
        state_of_health_percentage=health if health is not None else 100.0,
        metadata_problem=problem,
        uploaded_until=row["uploaded_until"],
        reported_until=row["reported_until"],
        latest_reading=row["latest_reading"],
    )


def _reading_point(device: _Device, row: Mapping[str, Any], *, attempts: int) -> _Point:
    """One online point: the interval from the previous reading to this one, in W, Wh and percent."""
    assert device.capacity_wh is not None
    time: datetime = row["time"]
    previous_time: datetime | None = row["previous_time"]
    start = previous_time if previous_time is not None else time  # no recent predecessor: an instant
    duration_s = (time - start).total_seconds()
    # Flux power is kW, positive charging (docs/design.md §5); the upstream wants W split by direction.
    held_w = (row["previous_power"] if previous_time is not None else 0.0) * 1000.0
    power_w = float(row["target_power"]) * 1000.0
    soe = float(row["soe"])
    body: dict[str, Any] = {
        "start_time": _iso(start),
        "duration_s": duration_s,
        "device_id": device.name,
        "last_is_online": True,
        "last_mode": "CHARGE" if power_w > 0 else "DISCHARGE" if power_w < 0 else "STANDBY",
        "battery_last_power_charge_w": _round(max(0.0, power_w)),
        "battery_last_power_discharge_w": _round(max(0.0, -power_w)),
        "battery_total_energy_charge_wh": _round(max(0.0, held_w) * duration_s / 3600.0),
        "battery_total_energy_discharge_wh": _round(max(0.0, -held_w) * duration_s / 3600.0),
        "battery_last_stored_energy_wh": _round(device.capacity_wh * soe / 100.0),
        "battery_last_capacity_energy_wh": _round(device.capacity_wh),
        "battery_last_backup_reserve_percentage": None,  # deprecated upstream, ignored there
        "battery_last_state_of_charge_percentage": _round(soe),
        "battery_last_state_of_health_percentage": device.state_of_health_percentage,
        # Not measured in flux, yet required non-null when online: a reading reached us, so the site is
        # taken as grid-connected, and home and solar (no source in flux) are sent as zero.
        "last_is_grid_online": True,
        "home_total_energy_wh": 0.0,
        "home_last_power_w": 0.0,
        "solar_total_energy_wh": 0.0,
        "solar_last_power_w": 0.0,
        "oem_raw_data": {"reading_time": _iso(time), "soe_percent": _round(soe), "target_power_kw": power_w / 1000.0},
    }
    return _Point(device_id=device.id, end=time, body=body, reading_time=time, attempts=attempts)


def _offline_body(device: _Device, start: datetime, end: datetime) -> dict[str, Any]:
    """The upstream's offline point (docs/design.md §5): last_is_online false and every nullable attribute null."""
    return {
        "start_time": _iso(start),
        "duration_s": (end - start).total_seconds(),
        "device_id": device.name,
        "last_is_online": False,
        "last_mode": None,
        "battery_last_power_charge_w": None,
        "battery_last_power_discharge_w": None,
        "battery_total_energy_charge_wh": None,
        "battery_total_energy_discharge_wh": None,
        "battery_last_stored_energy_wh": None,
        "battery_last_capacity_energy_wh": None,
        "battery_last_backup_reserve_percentage": None,
        "battery_last_state_of_charge_percentage": None,
        "battery_last_state_of_health_percentage": None,
        "last_is_grid_online": None,
        "home_total_energy_wh": None,
        "home_last_power_w": None,
        "solar_total_energy_wh": None,
        "solar_last_power_w": None,
        "oem_raw_data": {"last_reading_time": None if device.latest_reading is None else _iso(device.latest_reading)},
    }


def _results(payload: object, expected: int) -> list[tuple[bool, str]]:
    """The per-point answers, by index: a list of ``{status: OK|FAILED, message}``."""
    if isinstance(payload, dict):
        # Tolerate the list wrapped in an object, as some upstream versions answer.
        payload = next((payload[key] for key in ("telemetry", "results", "data") if key in payload), payload)
    if not isinstance(payload, list):
        raise ValueError("expected a list of per-point results")
    if len(payload) != expected:
        raise ValueError(f"expected {expected} per-point results, got {len(payload)}")
    results: list[tuple[bool, str]] = []
    for item in payload:
        if not isinstance(item, dict) or not isinstance(item.get("status"), str):
            raise ValueError(f"a per-point result has no status: {item!r}")
        results.append((item["status"] == "OK", str(item.get("message") or item["status"])))
    return results


def _retry_after_s(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0


def _round(value: float) -> float:
    # flux stores float4; rounding drops the binary noise (2.3 kW is 2299.99995 W as float4).
    return round(value, 3)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
