"""The optimizer's storage: what it reads of telemetry-ingest's schema flux and what it keeps in schema optimizer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg

from gridloop_common.contracts.flux import DeviceType
from gridloop_common.contracts.forecasts import ExternalForecastRequest, ForecastQuantity
from optimizer.forecasts import ExternalForecast, StepSeries, step_series

__all__ = ["ForecastRepository", "SiteDevices", "SiteHistory", "StoredExternalForecast", "site_devices"]

# telemetry-ingest aligns its meter rollups as TimescaleDB's time_bucket does (migrations/0001_baseline.sql).
_ROLLUP_ORIGIN: Final = datetime(2000, 1, 1, tzinfo=UTC)
_ROLLUP_MINUTES: Final = (30, 5)  # coarsest first: fewer rows to read

# The registry rows that say which meter measures what (docs/design.md §4; metadata keys in the README).
_SITE_DEVICES = """
SELECT id, name, type, metadata ->> 'meter_role' AS meter_role, metadata ->> 'site_meter' AS site_meter
FROM flux.mg_device_registry
WHERE site = $1 AND type IN ('meter', 'bess')
ORDER BY name
"""

# Per meter and step: the mean of its 5- or 30-minute rollups weighted by their reading counts; where a
# bucket has no power, its counters' increase (import minus export, kWh) over the bucket's length.
_METER_STEPS_FROM_ROLLUPS = """
meter_steps AS (
    SELECT
        rollups.device_id,
        date_bin($3::interval, rollups.time_b, $2::timestamptz) AS step_start,
        coalesce(
            sum(rollups.power_total_active_avg * rollups.reading_count)
                / nullif(sum(rollups.reading_count) FILTER (WHERE rollups.power_total_active_avg IS NOT NULL), 0),
            sum(rollups.energy_imported_active_delta - rollups.energy_exported_active_delta)
                / nullif(count(*) FILTER (WHERE rollups.energy_imported_active_delta IS NOT NULL
                                            AND rollups.energy_exported_active_delta IS NOT NULL), 0)
                * (60.0::double precision / {bucket_minutes})
        ) AS power_kw
    FROM flux.meter_reading_rollups AS rollups
    WHERE rollups.bucket_minutes = {bucket_minutes}
      AND rollups.device_id = ANY ($4::uuid[] || $5::uuid[])
      AND rollups.time_b >= $1 AND rollups.time_b < $2
    GROUP BY 1, 2
)"""

# A step that is not a whole number of rollup buckets (or a grid off theirs) reads the readings themselves.
_METER_STEPS_FROM_READINGS = """
meter_steps AS (
    SELECT
        readings.device_id,
        date_bin($3::interval, readings.time, $2::timestamptz) AS step_start,
        avg(readings.power_total_active)::double precision AS power_kw
    FROM flux.mg_meter_readings AS readings
    WHERE readings.device_id = ANY ($4::uuid[] || $5::uuid[])
      AND readings.time >= $1 AND readings.time < $2
    GROUP BY 1, 2
)"""

# Per step: the grid meters' summed mean power, the batteries' and the PV meters', each with how many
# devices had data in the step (a step where one is missing cannot give the site's load).
_SITE_STEPS = """
WITH {meter_steps},
battery_steps AS (
    SELECT
        readings.device_id,
        date_bin($3::interval, readings.time, $2::timestamptz) AS step_start,
        avg(readings.target_power)::double precision AS power_kw
    FROM flux.mg_bess_readings AS readings
    WHERE readings.device_id = ANY ($6::uuid[]) AND readings.time >= $1 AND readings.time < $2
    GROUP BY 1, 2
),
grid AS (
    SELECT step_start, sum(power_kw) AS kw, count(*) AS devices
    FROM meter_steps
    WHERE device_id = ANY ($4::uuid[]) AND power_kw IS NOT NULL
    GROUP BY 1
),
pv AS (
    SELECT step_start, sum(power_kw) AS kw, count(*) AS devices
    FROM meter_steps
    WHERE device_id = ANY ($5::uuid[]) AND power_kw IS NOT NULL
    GROUP BY 1
),
battery AS (
    SELECT step_start, sum(power_kw) AS kw, count(*) AS devices FROM battery_steps GROUP BY 1
),
steps AS (
    SELECT step_start FROM grid UNION SELECT step_start FROM pv
)
SELECT
    steps.step_start,
    grid.kw AS grid_kw,
    coalesce(grid.devices, 0) AS grid_devices,
    battery.kw AS battery_kw,
    coalesce(battery.devices, 0) AS battery_devices,
    pv.kw AS pv_meter_kw,
    coalesce(pv.devices, 0) AS pv_devices
FROM steps
LEFT JOIN grid USING (step_start)
LEFT JOIN battery USING (step_start)
LEFT JOIN pv USING (step_start)
ORDER BY steps.step_start
"""

# Sites are the registry's site values (docs/design.md §4) until flux.mg_sites holds them.
_SITE_EXISTS = """
SELECT EXISTS (SELECT FROM flux.mg_device_registry WHERE site = $1)
"""

_INSERT_EXTERNAL = """
INSERT INTO optimizer.external_forecasts
    (site, quantity, start_time, step_minutes, values_kw, expires_at, source, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id
"""

# A site's expired forecasts of the quantity go when a new one comes: nothing else ever reads them.
_DELETE_EXPIRED_EXTERNAL = """
DELETE FROM optimizer.external_forecasts WHERE site = $1 AND quantity = $2 AND expires_at <= $3
"""

_LIVE_EXTERNAL = """
SELECT start_time, step_minutes, values_kw, expires_at, received_at
FROM optimizer.external_forecasts
WHERE site = $1 AND quantity = $2 AND expires_at > $3
  AND start_time < $5
  AND start_time + make_interval(mins => step_minutes * cardinality(values_kw)) > $4
ORDER BY received_at, id
"""


@dataclass(frozen=True)
class SiteDevices:
    """Which of a site's registered devices the history reads, by what they measure."""

    grid_meters: tuple[str, ...]
    pv_meters: tuple[str, ...]
    batteries: tuple[str, ...]
    grid_meter_ids: tuple[uuid.UUID, ...]
    pv_meter_ids: tuple[uuid.UUID, ...]
    battery_ids: tuple[uuid.UUID, ...]


def site_devices(rows: Sequence[asyncpg.Record | dict[str, object]]) -> SiteDevices:
    """Sort a site's meters and batteries (id, name, type, meter_role, site_meter) by what they measure.

    - PV meters: ``metadata.meter_role = "pv"``.
    - Grid meters: ``metadata.meter_role = "grid"``, and meters without a role that a battery at the site
      names as its ``metadata.site_meter``; when there are none of either, every meter without a role.
      Meters with another role (a sub-meter) are not read: the grid meters already include them.
    - Batteries: every ``bess``.
    """
    meters = [row for row in rows if row["type"] == DeviceType.METER]
    batteries = [row for row in rows if row["type"] == DeviceType.BESS]
    named_by_batteries = {row["site_meter"] for row in batteries if row["site_meter"]}
    grid = [
        row
        for row in meters
        if row["meter_role"] == "grid" or (row["meter_role"] is None and row["name"] in named_by_batteries)
    ]
    if not grid:
        grid = [row for row in meters if row["meter_role"] is None]
    pv = [row for row in meters if row["meter_role"] == "pv"]
    return SiteDevices(
        grid_meters=tuple(str(row["name"]) for row in grid),
        pv_meters=tuple(str(row["name"]) for row in pv),
        batteries=tuple(str(row["name"]) for row in batteries),
        grid_meter_ids=tuple(_uuid(row["id"]) for row in grid),
        pv_meter_ids=tuple(_uuid(row["id"]) for row in pv),
        battery_ids=tuple(_uuid(row["id"]) for row in batteries),
    )


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass(frozen=True)
class SiteHistory:
    """A site's measured load and PV per step (kW averages, None where unknown) and the devices they came from.

    Without a PV meter, ``pv`` is all None and ``load`` is the load net of any PV behind the grid meter.
    """

    site: str
    load: StepSeries
    pv: StepSeries
    devices: SiteDevices

    @property
    def pv_measured(self) -> bool:
        return bool(self.devices.pv_meter_ids)


@dataclass(frozen=True)
class StoredExternalForecast:
    """What ``store_external`` kept: the row's id and when it stops counting."""

    forecast_id: int
    expires_at: datetime
    end: datetime


def _rollup_minutes(step: timedelta, end: datetime) -> int | None:
    """The rollup whose buckets tile the steps ending at ``end`` exactly, if any."""
    for minutes in _ROLLUP_MINUTES:
        bucket = timedelta(minutes=minutes)
        if step % bucket == timedelta(0) and (end - _ROLLUP_ORIGIN) % bucket == timedelta(0):
            return minutes
    return None


class ForecastRepository:
    """A site's load and PV history from schema flux, and the external forecasts in optimizer.external_forecasts.

    How the history is derived, per step of the planning grid (steps ending at ``end``):

    - ``grid_kw``: the sum over the site's grid meters of the mean ``power_total_active`` (positive when the
      site imports: import minus export), from the 30-minute rollups when the step is a multiple of 30 minutes
      on their grid, else from the 5-minute ones, else from the readings; a rollup bucket without power
      falls back to its energy counters' increase, import minus export, over the bucket;
    - ``battery_kw``: the sum over the site's batteries of the mean ``target_power`` of flux.mg_bess_readings
      (positive charging; the commanded power while the agent controls a battery, its measured AC power
      otherwise);
    - ``pv_kw = max(0, -pv_meter_kw)``: the PV meters' generation (their power is negative when generating);
    - ``load_kw = grid_kw - battery_kw + pv_kw``: what the site consumed that no plan controls, so that
      ``grid = load - pv + battery`` holds step by step.

    A step where any grid meter or battery has no reading has no load (None); the forecast treats it as
    missing, never as zero.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def site_history(self, site: str, *, end: datetime, step: timedelta, steps: int) -> SiteHistory:
        """The ``steps`` steps of ``step`` before ``end`` (the planning horizon's start)."""
        if end.tzinfo is None:
            raise ValueError("end must be timezone-aware")
        if step <= timedelta(0) or steps < 1:
            raise ValueError("step must be positive and steps at least 1")
        start = end - step * steps
        async with self._pool.acquire() as connection:
            devices = site_devices(await connection.fetch(_SITE_DEVICES, site))
            if not devices.grid_meter_ids and not devices.pv_meter_ids:
                rows: list[asyncpg.Record] = []
            else:
                minutes = _rollup_minutes(step, end)
                meter_steps = (
                    _METER_STEPS_FROM_READINGS
                    if minutes is None
                    else _METER_STEPS_FROM_ROLLUPS.format(bucket_minutes=minutes)
                )
                rows = await connection.fetch(
                    _SITE_STEPS.format(meter_steps=meter_steps),
                    start,
                    end,
                    step,
                    list(devices.grid_meter_ids),
                    list(devices.pv_meter_ids),
                    list(devices.battery_ids),
                )
        load_rows: list[tuple[datetime, float | None]] = []
        pv_rows: list[tuple[datetime, float | None]] = []
        for row in rows:
            pv_kw: float | None = None
            if devices.pv_meter_ids and row["pv_devices"] == len(devices.pv_meter_ids):
                pv_kw = max(0.0, -row["pv_meter_kw"])
            pv_rows.append((row["step_start"], pv_kw))
            complete = (
                bool(devices.grid_meter_ids)
                and row["grid_devices"] == len(devices.grid_meter_ids)
                and row["battery_devices"] == len(devices.battery_ids)
                and (pv_kw is not None or not devices.pv_meter_ids)
            )
            if complete:
                load_rows.append((row["step_start"], row["grid_kw"] - (row["battery_kw"] or 0.0) + (pv_kw or 0.0)))
        return SiteHistory(
            site=site,
            load=step_series(load_rows, start=start, step=step, steps=steps),
            pv=step_series(pv_rows, start=start, step=step, steps=steps),
            devices=devices,
        )

    async def site_exists(self, site: str) -> bool:
        """Whether any device is registered at ``site``."""
        return bool(await self._pool.fetchval(_SITE_EXISTS, site))

    async def store_external(
        self, request: ExternalForecastRequest, *, received_at: datetime
    ) -> StoredExternalForecast:
        """Keep one external forecast (and drop the site's expired ones of that quantity)."""
        step = timedelta(minutes=request.step)
        end = request.start + step * len(request.values)
        expires_at = request.expires_at or end
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_DELETE_EXPIRED_EXTERNAL, request.site, request.quantity.value, received_at)
            forecast_id = await connection.fetchval(
                _INSERT_EXTERNAL,
                request.site,
                request.quantity.value,
                request.start,
                request.step,
                request.values,
                expires_at,
                request.source,
                received_at,
            )
        return StoredExternalForecast(forecast_id=int(forecast_id), expires_at=expires_at, end=end)

    async def live_external(
        self, site: str, quantity: ForecastQuantity, *, now: datetime, start: datetime, end: datetime
    ) -> list[ExternalForecast]:
        """The site's external forecasts of ``quantity`` unexpired at ``now`` that overlap [start, end)."""
        rows = await self._pool.fetch(_LIVE_EXTERNAL, site, quantity.value, now, start, end)
        return [
            ExternalForecast(
                start=row["start_time"],
                step=timedelta(minutes=row["step_minutes"]),
                values=tuple(row["values_kw"]),
                expires_at=row["expires_at"],
                received_at=row["received_at"],
            )
            for row in rows
        ]
