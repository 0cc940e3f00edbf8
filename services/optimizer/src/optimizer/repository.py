"""SQL of the optimizer's storage (schema ``optimizer``) and of the sites it reads (``flux.mg_sites``).

Each public method is one statement, so one round trip: a run's outcome and all its plans are written by one
call of ``optimizer.finish_run`` (repeatable/function.optimizer.finish_run.sql), the plans sent as one binary
array. Times are aware datetimes; power is kW, positive into the device (docs/design.md §5).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from gridloop_common.contracts import InvalidSiteParameters, SiteParameters
from optimizer.tariffs import Tariff

__all__ = [
    "OptimizerRepository",
    "PlanVersion",
    "PlanWrite",
    "RunKind",
    "RunOutcome",
    "RunRecord",
    "RunStart",
    "RunState",
    "SiteLookup",
    "SitesUnavailable",
    "StoredPlan",
    "StoredTariff",
    "digest_inputs",
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
