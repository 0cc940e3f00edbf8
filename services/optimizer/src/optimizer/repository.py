"""SQL of the optimizer: its storage (schema ``optimizer``), the sites it reads (``flux.mg_sites``) and the
telemetry history its forecasts read (schema ``flux``).

Each public method is one statement, so one round trip: a run's outcome and all its plans are written by one
call of ``optimizer.finish_run`` (repeatable/function.optimizer.finish_run.sql), the plans sent as one binary
array. Times are aware datetimes; power is kW, positive into the device (docs/design.md §5).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import asyncpg

from gridloop_common.contracts import InvalidSiteParameters, SiteParameters
from gridloop_common.contracts.flux import DeviceType
from gridloop_common.contracts.forecasts import ExternalForecastRequest, ForecastQuantity
from optimizer.forecasts import ExternalForecast, StepSeries, step_series
from optimizer.tariffs import Tariff

__all__ = [
    "BatteryState",
    "ForecastRepository",
    "MeterState",
    "MpcSession",
    "OptimizerRepository",
    "PlanVersion",
    "PlanWrite",
    "PlanningRepository",
    "RegisteredBattery",
    "RegisteredCharger",
    "RunKind",
    "RunOutcome",
    "RunRecord",
    "RunStart",
    "RunState",
    "SiteDevices",
    "SiteHistory",
    "SiteLookup",
    "SitesUnavailable",
    "StoredExternalForecast",
    "StoredPlan",
    "StoredTariff",
    "digest_inputs",
    "site_devices",
]


class RunKind(enum.StrEnum):
    MPC = "mpc"
    DAY_AHEAD = "day_ahead"
    TARIFF = "tariff"


class RunState(enum.StrEnum):
    RUNNING = "running"
    OPTIMAL = "optimal"
    TIME_LIMIT = "time_limit"  # the time limit ended the solve; the best plan found was kept
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a later run of the same kind, scope and day replaced it
    STOPPED = "stopped"  # its plans are no longer in force


# Runs whose plans no longer count, even as the latest version of a device's plan.
_WITHDRAWN = (RunState.FAILED.value, RunState.STOPPED.value)


class SitesUnavailable(Exception):
    """flux.mg_sites or flux.mg_device_registry does not exist yet (telemetry-ingest has not migrated)."""


def digest_inputs(inputs: Mapping[str, Any]) -> str:
    """The sha256 of a problem's inputs as canonical JSON (sorted keys; datetimes and dates in ISO 8601)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _scope(scope: Sequence[str] | None) -> list[str] | None:
    """A scope as stored: sorted, without repeats; None is every site."""
    return None if scope is None else sorted(set(scope))


@dataclass(frozen=True)
class SiteLookup:
    """Sites by name: those usable (described or defaulted) and those whose row the contract refuses."""

    found: dict[str, SiteParameters]
    refused: dict[str, InvalidSiteParameters] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredTariff:
    tariff_id: UUID
    created_at: datetime
    tariff: Tariff
    prices: dict[str, list[float]]  # by site: one price per 10-minute step of its local day


@dataclass(frozen=True)
class RunStart:
    kind: RunKind
    scope: Sequence[str] | None  # None: every site
    inputs_digest: str
    started_at: datetime
    day: date | None = None  # day-ahead and tariff runs: the local day planned
    iteration: int | None = None  # day-ahead: the coordination round
    tariff_id: UUID | None = None


@dataclass(frozen=True)
class RunOutcome:
    state: RunState
    finished_at: datetime
    objective: float | None = None
    build_ms: float | None = None
    solve_ms: float | None = None
    violations: Sequence[Mapping[str, Any]] = ()  # {"limit", "site", "device", "step", "amount"}
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.state is RunState.RUNNING:
            raise ValueError("a finished run cannot be 'running'")


@dataclass(frozen=True)
class RunRecord:
    run_id: UUID
    kind: RunKind
    scope: tuple[str, ...] | None
    inputs_digest: str
    state: RunState
    reason: str | None
    objective: float | None
    build_ms: float | None
    solve_ms: float | None
    violations: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime | None
    day: date | None
    iteration: int | None
    tariff_id: UUID | None


class _Steps:
    """Equal steps of real time from ``starts_at``: step i runs from starts_at + i * step and then expires."""

    starts_at: datetime
    step: timedelta
    setpoints_kw: Sequence[float]

    @property
    def ends_at(self) -> datetime:
        return self.starts_at + len(self.setpoints_kw) * self.step

    def step_starts(self) -> list[datetime]:
        return [self.starts_at + index * self.step for index in range(len(self.setpoints_kw))]

    def step_ends(self) -> list[datetime]:
        return [self.starts_at + (index + 1) * self.step for index in range(len(self.setpoints_kw))]

    def setpoint_at(self, instant: datetime) -> float | None:
        """The setpoint of the step in force at ``instant``; None before the plan or once its last step ended."""
        if not self.starts_at <= instant < self.ends_at:
            return None
        return self.setpoints_kw[(instant - self.starts_at) // self.step]


@dataclass(frozen=True)
class PlanWrite(_Steps):
    """One device's setpoints over equal steps of real time from ``starts_at`` (kW, positive charges)."""

    site: str
    device: str
    starts_at: datetime
    step: timedelta
    setpoints_kw: Sequence[float]

    def __post_init__(self) -> None:
        if not self.setpoints_kw:
            raise ValueError(f"plan of {self.device}: at least one step")
        if self.starts_at.tzinfo is None:
            raise ValueError(f"plan of {self.device}: starts_at must be aware")
        if self.step <= timedelta(0) or self.step % timedelta(seconds=1):
            raise ValueError(f"plan of {self.device}: the step must be a positive whole number of seconds")
        if not all(math.isfinite(setpoint) for setpoint in self.setpoints_kw):
            raise ValueError(f"plan of {self.device}: setpoints must be finite")


@dataclass(frozen=True)
class PlanVersion:
    site: str
    device: str
    version: int


@dataclass(frozen=True)
class StoredPlan(_Steps):
    site: str
    device: str
    version: int
    run_id: UUID
    created_at: datetime
    starts_at: datetime
    step: timedelta
    setpoints_kw: list[float]


_RUN_COLUMNS = (
    "run_id, kind, scope, inputs_digest, state, reason, objective, build_ms, solve_ms, violations, started_at,"
    " finished_at, day, iteration, tariff_id"
)
_PLAN_COLUMNS = "site, device, version, run_id, created_at, starts_at, step_seconds, setpoints_kw"


def _run(row: Mapping[str, Any]) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        kind=RunKind(row["kind"]),
        scope=None if row["scope"] is None else tuple(row["scope"]),
        inputs_digest=row["inputs_digest"],
        state=RunState(row["state"]),
        reason=row["reason"],
        objective=row["objective"],
        build_ms=row["build_ms"],
        solve_ms=row["solve_ms"],
        violations=list(row["violations"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        day=row["day"],
        iteration=row["iteration"],
        tariff_id=row["tariff_id"],
    )


def _plan(row: Mapping[str, Any]) -> StoredPlan:
    return StoredPlan(
        site=row["site"],
        device=row["device"],
        version=row["version"],
        run_id=row["run_id"],
        created_at=row["created_at"],
        starts_at=row["starts_at"],
        step=timedelta(seconds=row["step_seconds"]),
        setpoints_kw=list(row["setpoints_kw"]),
    )


def _tariff(row: Mapping[str, Any]) -> StoredTariff:
    return StoredTariff(
        tariff_id=row["tariff_id"],
        created_at=row["created_at"],
        tariff=Tariff.from_body(row["kind"], row["day"], row["scope"], row["body"]),
        prices={site: list(prices) for site, prices in row["prices"].items()},
    )


class OptimizerRepository:
    """The optimizer's runs, tariffs and plans, and the sites it plans for."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # ---- sites (flux.mg_sites, owned by telemetry-ingest) ----

    async def sites(self, names: Sequence[str] | None = None) -> SiteLookup:
        """The sites named (None: every site of the registry or of flux.mg_sites), with their parameters.

        A site of the registry without a flux.mg_sites row gets ``SiteParameters.defaults``; a name found in
        neither table is absent from the answer, so the caller can refuse it.
        """
        try:
            rows = await self._pool.fetch(
                "SELECT known.name, site.name IS NOT NULL AS described, site.timezone, site.import_limit_kw,"
                " site.export_limit_kw, site.site_meter, site.metadata"
                " FROM (SELECT registry.site AS name FROM flux.mg_device_registry AS registry"
                "       UNION SELECT described.name FROM flux.mg_sites AS described) AS known"
                " LEFT JOIN flux.mg_sites AS site ON site.name = known.name"
                " WHERE $1::text[] IS NULL OR known.name = ANY ($1::text[])"
                " ORDER BY known.name",
                None if names is None else list(names),
            )
        except asyncpg.UndefinedTableError as error:
            raise SitesUnavailable(str(error)) from error
        found: dict[str, SiteParameters] = {}
        refused: dict[str, InvalidSiteParameters] = {}
        for row in rows:
            if not row["described"]:
                found[row["name"]] = SiteParameters.defaults(row["name"])
                continue
            try:
                found[row["name"]] = SiteParameters.from_row(row)
            except InvalidSiteParameters as error:
                refused[row["name"]] = error
        return SiteLookup(found, refused)

    # ---- tariffs ----

    async def store_tariff(self, tariff: Tariff, prices: Mapping[str, Sequence[float]]) -> StoredTariff:
        """Record ``tariff`` as posted now, with each site's price vector; it is then the one in force."""
        row = await self._pool.fetchrow(
            "INSERT INTO optimizer.tariffs (day, scope, kind, body, prices) VALUES ($1, $2, $3, $4, $5)"
            " RETURNING tariff_id, created_at, day, scope, kind, body, prices",
            tariff.day,
            _scope(tariff.scope),
            tariff.kind.value,
            tariff.body(),
            {site: list(vector) for site, vector in prices.items()},
        )
        assert row is not None  # INSERT ... RETURNING returns its row
        return _tariff(row)

    async def tariffs_in_force(self, sites: Sequence[str], day: date) -> dict[str, StoredTariff]:
        """For each site, the latest tariff posted for ``day`` whose scope holds it; sites without one are absent."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT ON (asked.site) asked.site, tariff.tariff_id, tariff.created_at, tariff.day,"
            " tariff.scope, tariff.kind, tariff.body, tariff.prices"
            " FROM unnest($1::text[]) AS asked (site)"
            " JOIN optimizer.tariffs AS tariff"
            "   ON tariff.day = $2 AND (tariff.scope IS NULL OR asked.site = ANY (tariff.scope))"
            " ORDER BY asked.site, tariff.created_at DESC, tariff.tariff_id",
            list(sites),
            day,
        )
        return {row["site"]: _tariff(row) for row in rows}

    # ---- runs and plans ----

    async def start_run(self, start: RunStart) -> RunRecord:
        """Record a run as running."""
        row = await self._pool.fetchrow(
            "INSERT INTO optimizer.runs (kind, scope, inputs_digest, started_at, day, iteration, tariff_id)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_RUN_COLUMNS}",
            start.kind.value,
            _scope(start.scope),
            start.inputs_digest,
            start.started_at,
            start.day,
            start.iteration,
            start.tariff_id,
        )
        assert row is not None  # INSERT ... RETURNING returns its row
        return _run(row)

    async def finish_run(
        self, run_id: UUID, outcome: RunOutcome, plans: Sequence[PlanWrite] = (), *, supersede: bool = True
    ) -> list[PlanVersion] | None:
        """Record a run's outcome and store its plans, each as the next version for its site and device.

        With ``supersede``, an optimal or time-limited run marks the earlier finished runs of the same kind, scope
        and day 'superseded'. Returns the versions stored, or None when the run was no longer running (stopped
        meanwhile): then nothing is stored.
        """
        devices = [(plan.site, plan.device) for plan in plans]
        if len(set(devices)) != len(devices):
            raise ValueError("a run has at most one plan per site and device")
        answer = await self._pool.fetchval(
            "SELECT optimizer.finish_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            run_id,
            outcome.state.value,
            outcome.reason,
            outcome.objective,
            outcome.build_ms,
            outcome.solve_ms,
            [dict(violation) for violation in outcome.violations],
            outcome.finished_at,
            [
                (plan.site, plan.device, plan.starts_at, int(plan.step.total_seconds()), list(plan.setpoints_kw))
                for plan in plans
            ],
            supersede,
        )
        if not answer["finished"]:
            return None
        return [PlanVersion(stored["site"], stored["device"], stored["version"]) for stored in answer["plans"]]

    async def stop_runs(
        self, kind: RunKind, scope: Sequence[str] | None, at: datetime, reason: str = "stopped"
    ) -> list[UUID]:
        """Stop every run of ``kind`` and exactly ``scope`` that is running or whose plans are in force."""
        rows = await self._pool.fetch(
            "UPDATE optimizer.runs SET state = 'stopped', reason = $4, finished_at = coalesce(finished_at, $3)"
            " WHERE kind = $1 AND scope IS NOT DISTINCT FROM $2::text[]"
            "   AND state IN ('running', 'optimal', 'time_limit')"
            " RETURNING run_id",
            kind.value,
            _scope(scope),
            at,
            reason,
        )
        return [row["run_id"] for row in rows]

    async def runs(self, *, limit: int = 20, run_id: UUID | None = None) -> list[RunRecord]:
        """The latest runs, newest first, or only ``run_id``."""
        rows = await self._pool.fetch(
            f"SELECT {_RUN_COLUMNS} FROM optimizer.runs WHERE $1::uuid IS NULL OR run_id = $1"
            " ORDER BY started_at DESC, run_id LIMIT $2",
            run_id,
            limit,
        )
        return [_run(row) for row in rows]

    async def plans_of_run(self, run_id: UUID) -> list[StoredPlan]:
        """The plans a run stored, by site and device."""
        rows = await self._pool.fetch(
            f"SELECT {_PLAN_COLUMNS} FROM optimizer.plans WHERE run_id = $1 ORDER BY site, device", run_id
        )
        return [_plan(row) for row in rows]

    async def plans_in_force(self, at: datetime, *, sites: Sequence[str] | None = None) -> list[StoredPlan]:
        """Each device's latest plan, when its run was not stopped or failed and its last step ends after ``at``.

        Only the latest version counts: a device whose newest plan has expired has no plan, even if an older
        version reached further.
        """
        rows = await self._pool.fetch(
            # The latest version of each device is chosen from the key alone, so the setpoint arrays of the
            # versions it replaced are never read.
            "SELECT plan.site, plan.device, plan.version, plan.run_id, plan.created_at, plan.starts_at,"
            " plan.step_seconds, plan.setpoints_kw"
            " FROM (SELECT site, device, max(version) AS version FROM optimizer.plans"
            "       WHERE $2::text[] IS NULL OR site = ANY ($2::text[]) GROUP BY site, device) AS latest"
            " JOIN optimizer.plans AS plan USING (site, device, version)"
            " JOIN optimizer.runs AS run ON run.run_id = plan.run_id"
            " WHERE plan.ends_at > $1 AND run.state <> ALL ($3::text[])"
            " ORDER BY plan.site, plan.device",
            at,
            None if sites is None else list(sites),
            list(_WITHDRAWN),
        )
        return [_plan(row) for row in rows]


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


# ---- what plans start from: batteries, live state, MPC sessions ----


@dataclass(frozen=True)
class RegisteredBattery:
    """An active battery of the registry, its metadata as stored (checked by DeviceMetadata, not here)."""

    name: str
    site: str
    metadata: object


@dataclass(frozen=True)
class RegisteredCharger:
    """An active EV charger of the registry (on_off_ev_charger, electric_vehicle_v1g or _v2g), as stored."""

    name: str
    site: str
    device_type: str
    metadata: object


@dataclass(frozen=True)
class BatteryState:
    """A battery's latest reading: state of energy (percent) and power (kW, positive charging)."""

    name: str
    time: datetime
    soc_pct: float
    power_kw: float


@dataclass(frozen=True)
class MeterState:
    """A site meter's latest reading: power at the grid connection (kW, positive importing)."""

    site: str
    time: datetime
    power_kw: float


@dataclass(frozen=True)
class MpcSession:
    session_id: UUID
    scope: tuple[str, ...] | None
    request: dict[str, Any]
    state: str
    reason: str | None
    created_at: datetime
    stops_at: datetime
    last_run_id: UUID | None
    last_planned_at: datetime | None
    ended_at: datetime | None


_SESSION_COLUMNS = (
    "session_id, scope, request, state, reason, created_at, stops_at, last_run_id, last_planned_at, ended_at"
)


def _session(row: Mapping[str, Any]) -> MpcSession:
    return MpcSession(
        session_id=row["session_id"],
        scope=None if row["scope"] is None else tuple(row["scope"]),
        request=dict(row["request"]),
        state=row["state"],
        reason=row["reason"],
        created_at=row["created_at"],
        stops_at=row["stops_at"],
        last_run_id=row["last_run_id"],
        last_planned_at=row["last_planned_at"],
        ended_at=row["ended_at"],
    )


class PlanningRepository:
    """The inputs of a plan from schema flux (batteries, their latest SoC, site meters) and the MPC sessions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def batteries(self, sites: Sequence[str]) -> list[RegisteredBattery]:
        """The active batteries of ``sites``, by site and name."""
        rows = await self._pool.fetch(
            "SELECT name, site, metadata FROM flux.mg_device_registry"
            " WHERE type = 'bess' AND active AND site = ANY ($1::text[]) ORDER BY site, name",
            list(sites),
        )
        return [RegisteredBattery(row["name"], row["site"], row["metadata"]) for row in rows]

    async def chargers(self, sites: Sequence[str]) -> list[RegisteredCharger]:
        """The active EV chargers of ``sites``, by site and name."""
        rows = await self._pool.fetch(
            "SELECT name, site, type, metadata FROM flux.mg_device_registry"
            " WHERE type IN ('on_off_ev_charger', 'electric_vehicle_v1g', 'electric_vehicle_v2g')"
            " AND active AND site = ANY ($1::text[]) ORDER BY site, name",
            list(sites),
        )
        return [RegisteredCharger(row["name"], row["site"], row["type"], row["metadata"]) for row in rows]

    async def charger_soc(self, names: Sequence[str]) -> dict[str, float]:
        """Each named charger's car SoC (%) from its latest reading (flux.mg_ev_charger_readings), when that
        reading has a SoC and a transaction (a car plugged in now); a charger whose latest reading has not is
        absent: an older SoC may be another car's."""
        rows = await self._pool.fetch(
            "SELECT registry.name, reading.soc_pct"
            " FROM flux.mg_device_registry AS registry"
            " CROSS JOIN LATERAL (SELECT soc_pct, transaction_id FROM flux.mg_ev_charger_readings AS charger"
            "                     WHERE charger.device_id = registry.id ORDER BY time DESC LIMIT 1) AS reading"
            " WHERE registry.name = ANY ($1::text[])"
            " AND reading.soc_pct IS NOT NULL AND reading.transaction_id IS NOT NULL",
            list(names),
        )
        return {row["name"]: float(row["soc_pct"]) for row in rows}

    async def battery_states(self, names: Sequence[str]) -> dict[str, BatteryState]:
        """Each named battery's latest reading of flux.mg_bess_readings; a battery without one is absent."""
        rows = await self._pool.fetch(
            "SELECT registry.name, reading.time, reading.soe, reading.target_power"
            " FROM flux.mg_device_registry AS registry"
            " CROSS JOIN LATERAL (SELECT time, soe, target_power FROM flux.mg_bess_readings AS bess"
            "                     WHERE bess.device_id = registry.id ORDER BY time DESC LIMIT 1) AS reading"
            " WHERE registry.name = ANY ($1::text[])",
            list(names),
        )
        return {
            row["name"]: BatteryState(row["name"], row["time"], float(row["soe"]), float(row["target_power"]))
            for row in rows
        }

    async def meter_states(self, site_meters: Mapping[str, str]) -> dict[str, MeterState]:
        """The latest ``power_total_active`` of each site's meter (``{site: meter name}``), when it has one."""
        if not site_meters:
            return {}
        sites = list(site_meters)
        rows = await self._pool.fetch(
            "SELECT asked.site, reading.time, reading.power_total_active"
            " FROM unnest($1::text[], $2::text[]) AS asked (site, meter)"
            " JOIN flux.mg_device_registry AS registry ON registry.name = asked.meter"
            " CROSS JOIN LATERAL (SELECT time, power_total_active FROM flux.mg_meter_readings AS meter"
            "                     WHERE meter.device_id = registry.id AND power_total_active IS NOT NULL"
            "                     ORDER BY time DESC LIMIT 1) AS reading",
            sites,
            [site_meters[site] for site in sites],
        )
        return {row["site"]: MeterState(row["site"], row["time"], float(row["power_total_active"])) for row in rows}

    async def fail_unfinished_runs(self, at: datetime, reason: str) -> list[UUID]:
        """Mark failed every run still 'running': after a restart nobody is solving it any more."""
        rows = await self._pool.fetch(
            "UPDATE optimizer.runs SET state = 'failed', reason = $2, finished_at = greatest(started_at, $1)"
            " WHERE state = 'running' RETURNING run_id",
            at,
            reason,
        )
        return [row["run_id"] for row in rows]

    async def start_mpc_session(
        self, scope: Sequence[str] | None, request: Mapping[str, Any], *, at: datetime, stops_at: datetime
    ) -> tuple[MpcSession, list[MpcSession]]:
        """Record a new active MPC for ``scope``, ending the one active for the same scope (returned too)."""
        stored_scope = _scope(scope)
        async with self._pool.acquire() as connection, connection.transaction():
            replaced = await connection.fetch(
                "UPDATE optimizer.mpc_sessions SET state = 'stopped', reason = 'replaced', ended_at = $2"
                " WHERE state = 'active' AND scope IS NOT DISTINCT FROM $1::text[]"
                f" RETURNING {_SESSION_COLUMNS}",
                stored_scope,
                at,
            )
            row = await connection.fetchrow(
                "INSERT INTO optimizer.mpc_sessions (scope, request, created_at, stops_at) VALUES ($1, $2, $3, $4)"
                f" RETURNING {_SESSION_COLUMNS}",
                stored_scope,
                dict(request),
                at,
                stops_at,
            )
        assert row is not None  # INSERT ... RETURNING returns its row
        return _session(row), [_session(each) for each in replaced]

    async def end_mpc_sessions(
        self, scope: Sequence[str] | None, *, at: datetime, state: str = "stopped", reason: str
    ) -> list[MpcSession]:
        """End the active MPC of ``scope`` (exactly that scope); returns what was ended."""
        rows = await self._pool.fetch(
            "UPDATE optimizer.mpc_sessions SET state = $3, reason = $4, ended_at = $2"
            " WHERE state = 'active' AND scope IS NOT DISTINCT FROM $1::text[]"
            f" RETURNING {_SESSION_COLUMNS}",
            _scope(scope),
            at,
            state,
            reason,
        )
        return [_session(row) for row in rows]

    async def end_mpc_session(self, session_id: UUID, *, at: datetime, state: str, reason: str) -> bool:
        """End one MPC if it is still active; False when it was not."""
        row = await self._pool.fetchrow(
            "UPDATE optimizer.mpc_sessions SET state = $3, reason = $4, ended_at = $2"
            " WHERE session_id = $1 AND state = 'active' RETURNING session_id",
            session_id,
            at,
            state,
            reason,
        )
        return row is not None

    async def record_mpc_run(self, session_id: UUID, run_id: UUID, planned_at: datetime) -> None:
        await self._pool.execute(
            "UPDATE optimizer.mpc_sessions SET last_run_id = $2, last_planned_at = $3 WHERE session_id = $1",
            session_id,
            run_id,
            planned_at,
        )

    async def mpc_session(self, session_id: UUID) -> MpcSession | None:
        row = await self._pool.fetchrow(
            f"SELECT {_SESSION_COLUMNS} FROM optimizer.mpc_sessions WHERE session_id = $1", session_id
        )
        return None if row is None else _session(row)

    async def active_mpc_sessions(self) -> list[MpcSession]:
        rows = await self._pool.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM optimizer.mpc_sessions WHERE state = 'active' ORDER BY created_at"
        )
        return [_session(row) for row in rows]

    async def store_run_details(self, run_id: UUID, sites: Sequence[Mapping[str, Any]]) -> None:
        """What a run planned per site (optimizer.run_details), written once the run is finished."""
        await self._pool.execute(
            "INSERT INTO optimizer.run_details (run_id, sites) VALUES ($1, $2)"
            " ON CONFLICT (run_id) DO UPDATE SET sites = excluded.sites",
            run_id,
            [dict(site) for site in sites],
        )

    async def run_details(self, run_id: UUID) -> list[dict[str, Any]] | None:
        sites = await self._pool.fetchval("SELECT sites FROM optimizer.run_details WHERE run_id = $1", run_id)
        return None if sites is None else [dict(site) for site in sites]
