"""One planning run: read the live inputs, solve each site, store the run and its plans, then send the plans.

Every planning endpoint ends here (tariffs, day-ahead coordination, each MPC re-plan). The order is the
contract of docs/design.md §8: the run is recorded as running, solved (in a worker thread, so the event loop
keeps serving other requests; each solve is bounded by the time limit), finished with its plans in one
statement, and only then are the plans published, each with a publisher confirm. A solve that raises is a
failed run with the reason; a limit that cannot be met is a violation in the answer, never an error.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final, Protocol
from uuid import UUID

from gridloop_common.contracts import SiteParameters, routing
from gridloop_common.contracts.plans import DevicePlan, PlanKind, PlanStep
from gridloop_common.messaging import Publisher, PublishError
from optimizer.problem import Plan, PlanStatus, ProblemError, SiteProblem
from optimizer.repository import (
    ForecastRepository,
    OptimizerRepository,
    PlanningRepository,
    PlanWrite,
    RunKind,
    RunOutcome,
    RunStart,
    RunState,
    digest_inputs,
)
from optimizer.site_forecasts import site_forecasts
from optimizer.site_problems import (
    LeftOut,
    live_load_kw,
    plan_writes,
    plannable_batteries,
    plannable_vehicles,
    site_answer,
    site_problem,
    violation_records,
)
from optimizer.solver import PlanSolver

__all__ = ["PlanningRun", "Refusal", "RunResult", "SiteHorizon", "SolverLike", "empty_plan"]

logger = logging.getLogger(__name__)

# A meter reading older than this many steps no longer says what the site draws now.
_FRESH_STEPS: Final = 2
_STATE_OF: Final = {
    PlanStatus.OPTIMAL: RunState.OPTIMAL,
    PlanStatus.TIME_LIMIT: RunState.TIME_LIMIT,
    PlanStatus.FAILED: RunState.FAILED,
}
_PLAN_KIND: Final = {RunKind.MPC: PlanKind.MPC, RunKind.DAY_AHEAD: PlanKind.DAY_AHEAD, RunKind.TARIFF: PlanKind.TARIFF}


class Refusal(Exception):
    """A request the service cannot plan on its merits: the 4xx it answers (409 nothing to plan with, 422 a
    field only the service can check), naming the field when there is one."""

    def __init__(self, status: int, error: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field


class SolverLike(Protocol):
    """What a run needs of a solver (``PlanSolver``); tests put a failing one in its place."""

    def solve(self, problem: SiteProblem, *, time_limit_s: float | None = None) -> Plan: ...


@dataclass(frozen=True)
class SiteHorizon:
    """One site's horizon: ``steps`` steps of ``step`` from ``start`` with a price each; only the first
    ``kept_steps`` are stored and sent (an MPC plans past its stop to keep one model shape)."""

    site: SiteParameters
    start: datetime
    step: timedelta
    prices: Sequence[float]
    import_limits: Sequence[float | None]
    kept_steps: int
    live_load: bool = False  # take the first step's load from the site meter when it is fresh
    with_batteries: bool = True  # False: plan the site without its batteries (MPC electric_storage false)
    # True: plan the site's EV chargers too (MPC electric_vehicle); the other runs do not plan them yet.
    with_vehicles: bool = False

    @property
    def steps(self) -> int:
        return len(self.prices)


@dataclass
class RunResult:
    run_id: UUID
    state: RunState
    objective: float | None
    reason: str | None
    sites: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    unpublished: list[str] = field(default_factory=list)  # devices whose plan the broker did not confirm
    devices: list[tuple[str, str]] = field(default_factory=list)  # (site, device) planned
    starting_soc: dict[str, float] = field(default_factory=dict)  # each planned battery's SoC at the start, %

    def summary(self) -> dict[str, Any]:
        """The fields every planning answer carries."""
        body: dict[str, Any] = {
            "run_id": str(self.run_id),
            "state": self.state.value,
            "objective": None if self.objective is None else round(self.objective, 6),
        }
        if self.reason:
            body["reason"] = self.reason
        if self.left_out:
            body["left_out"] = [each.as_json() for each in self.left_out]
        if self.unpublished:
            body["unpublished"] = self.unpublished
        return body


def empty_plan(kind: RunKind, run_id: UUID, device: str, *, issued_at: datetime) -> DevicePlan:
    """A plan without steps: it supersedes the device's running plan, which returns it to its default."""
    return DevicePlan(
        plan_id=uuid.uuid4(), run_id=run_id, kind=_PLAN_KIND[kind], device_name=device, issued_at=issued_at, steps=[]
    )


def _device_plan(kind: RunKind, run_id: UUID, write: PlanWrite, *, issued_at: datetime) -> DevicePlan:
    steps = [
        PlanStep(starts_at=begin, ends_at=end, power_w=round(setpoint * 1000))
        for begin, end, setpoint in zip(write.step_starts(), write.step_ends(), write.setpoints_kw, strict=True)
    ]
    return DevicePlan(
        plan_id=uuid.uuid4(),
        run_id=run_id,
        kind=_PLAN_KIND[kind],
        device_name=write.device,
        issued_at=issued_at,
        steps=steps,
    )


def _solve_all(solver: SolverLike, problems: list[tuple[str, SiteProblem]], time_limit_s: float) -> list[Plan]:
    # Runs in a worker thread: one solver is never used by two threads at once (the caller holds its lock).
    return [solver.solve(problem, time_limit_s=time_limit_s) for _, problem in problems]


class PlanningRun:
    """Carries out runs; one per service, shared by every handler."""

    def __init__(
        self,
        *,
        optimizer: OptimizerRepository,
        planning: PlanningRepository,
        forecasts: ForecastRepository,
        publisher: Publisher,
        time_limit_s: float,
        solver_factory: Callable[[], SolverLike] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.planning = planning
        self.forecasts = forecasts
        self._publisher = publisher
        self.time_limit_s = time_limit_s
        self._solver_factory = solver_factory or (lambda: PlanSolver(time_limit_s=time_limit_s))

    def new_solver(self) -> SolverLike:
        return self._solver_factory()

    async def run(
        self,
        *,
        kind: RunKind,
        scope: Sequence[str] | None,
        horizons: Sequence[SiteHorizon],
        now: datetime,
        solver: SolverLike | None = None,
        day: date | None = None,
        iteration: int | None = None,
        tariff_id: UUID | None = None,
        soc_targets: Mapping[str, float] | None = None,
        vehicle_soc: Mapping[str, float] | None = None,
    ) -> RunResult:
        """Plan every horizon in one run; the run is stored before its plans are published.

        Each battery ends the horizon with at least ``soc_targets[name]`` (%), else the SoC it starts with.
        Each car starts from its charger's latest SoC reading, else ``vehicle_soc[name]`` (%) when given (an
        MPC's last plan), else from its metadata.
        """
        names = [horizon.site.name for horizon in horizons]
        registered = await self.planning.batteries(names)
        states = await self.planning.battery_states([device.name for device in registered])
        batteries = plannable_batteries(registered, states, soc_targets)
        with_vehicles = [horizon.site.name for horizon in horizons if horizon.with_vehicles]
        chargers = await self.planning.chargers(with_vehicles) if with_vehicles else []
        # A car's SoC: the charger's latest reading, else what an MPC's last plan expects now, else metadata.ev.
        car_soc = {**(vehicle_soc or {}), **await self.planning.charger_soc([charger.name for charger in chargers])}
        left_out = list(batteries.left_out)
        meters = await self.planning.meter_states(
            {h.site.name: h.site.site_meter for h in horizons if h.live_load and h.site.site_meter}
        )
        problems: list[tuple[str, SiteProblem]] = []
        for horizon in horizons:
            name = horizon.site.name
            forecast = await site_forecasts(
                self.forecasts,
                name,
                start=horizon.start,
                step=horizon.step,
                steps=horizon.steps,
                now=now,
                time_zone=horizon.site.zone,
            )
            site_batteries = batteries.by_site.get(name, []) if horizon.with_batteries else []
            site_vehicles = []
            if horizon.with_vehicles:
                vehicles = plannable_vehicles(
                    [charger for charger in chargers if charger.site == name],
                    car_soc,
                    start=horizon.start,
                    step=horizon.step,
                    zones={name: horizon.site.zone},
                )
                site_vehicles = vehicles.by_site.get(name, [])
                left_out.extend(vehicles.left_out)
            load = list(forecast.load.values)
            pv = list(forecast.pv.values)
            if horizon.live_load:
                measured = live_load_kw(
                    meters.get(name),
                    states,
                    site_batteries,
                    pv_kw=pv[0],
                    now=now,
                    fresh_for=horizon.step * _FRESH_STEPS,
                )
                load[0] = load[0] if measured is None else measured
            limits = [_tighter(limit, horizon.site.import_limit_kw) for limit in horizon.import_limits]
            try:
                problem = site_problem(
                    start=horizon.start,
                    step=horizon.step,
                    prices=horizon.prices,
                    load_kw=load,
                    pv_kw=pv,
                    batteries=site_batteries,
                    import_limit_kw=limits,
                    export_limit_kw=horizon.site.export_limit_kw,
                    vehicles=site_vehicles,
                )
            except ProblemError as error:
                raise Refusal(422, "invalid_request", f"site {name}: {error}", field=error.field) from error
            problems.append((name, problem))
        digest = digest_inputs(
            {
                "kind": kind.value,
                "sites": [
                    {
                        "site": name,
                        "start": problem.start,
                        "step_hours": problem.step_hours,
                        "prices": problem.import_price.tolist(),
                        "load": problem.load_kw.tolist(),
                        "pv": problem.pv_kw.tolist(),
                        "import_limit": [None if v == float("inf") else v for v in problem.import_limit_kw.tolist()],
                        "batteries": [repr(battery) for battery in problem.batteries],
                        "vehicles": [repr(vehicle) for vehicle in problem.vehicles],
                    }
                    for name, problem in problems
                ],
            }
        )
        record = await self.optimizer.start_run(
            RunStart(
                kind=kind,
                scope=scope,
                inputs_digest=digest,
                started_at=now,
                day=day,
                iteration=iteration,
                tariff_id=tariff_id,
            )
        )
        result = RunResult(run_id=record.run_id, state=RunState.RUNNING, objective=None, reason=None)
        result.left_out = left_out
        result.starting_soc = {
            battery.name: battery.soc_initial_pct for name, problem in problems for battery in problem.batteries
        }
        try:
            plans = await asyncio.to_thread(_solve_all, solver or self.new_solver(), problems, self.time_limit_s)
        except Exception as error:  # whatever a solve raises is this run's failure
            # Answered and recorded, never an unanswered RPC.
            logger.exception("solve failed", extra={"run_id": str(record.run_id)})
            return await self._fail(result, now, f"solve failed: {error}")
        return await self._finish(kind, result, horizons, problems, plans, now)

    async def _fail(self, result: RunResult, now: datetime, reason: str) -> RunResult:
        await self.optimizer.finish_run(
            result.run_id, RunOutcome(state=RunState.FAILED, finished_at=now, reason=reason), supersede=False
        )
        result.state, result.reason = RunState.FAILED, reason
        return result

    async def _finish(
        self,
        kind: RunKind,
        result: RunResult,
        horizons: Sequence[SiteHorizon],
        problems: list[tuple[str, SiteProblem]],
        plans: list[Plan],
        now: datetime,
    ) -> RunResult:
        failed = [name for (name, _), plan in zip(problems, plans, strict=True) if plan.status is PlanStatus.FAILED]
        if failed:
            return await self._fail(result, now, f"the solver gave up on {', '.join(failed)}")
        writes: list[PlanWrite] = []
        violations: list[dict[str, Any]] = []
        for horizon, (name, _), plan in zip(horizons, problems, plans, strict=True):
            kept = horizon.kept_steps
            result.sites.append(site_answer(name, plan, start=horizon.start, step=horizon.step, steps=kept))
            writes.extend(plan_writes(name, plan, start=horizon.start, step=horizon.step, steps=kept))
            violations.extend(
                record
                for record in violation_records(name, plan, start=horizon.start, step=horizon.step)
                if record["step"] < kept
            )
        state = RunState.TIME_LIMIT if any(plan.status is PlanStatus.TIME_LIMIT for plan in plans) else RunState.OPTIMAL
        objective = sum(plan.objective for plan in plans)
        outcome = RunOutcome(
            state=state,
            finished_at=now,
            objective=objective,
            build_ms=sum(plan.build_s for plan in plans) * 1000.0,
            solve_ms=sum(plan.solve_s for plan in plans) * 1000.0,
            violations=violations,
        )
        stored = await self.optimizer.finish_run(result.run_id, outcome, writes)
        if stored is None:
            # Stopped while it solved (POST /calculate_mpc without a body): nothing stored, nothing sent.
            result.state, result.reason = RunState.STOPPED, "stopped while planning"
            return result
        await self.planning.store_run_details(result.run_id, result.sites)
        result.state, result.objective = state, objective
        result.devices = [(write.site, write.device) for write in writes]
        result.unpublished = await self.publish(
            [_device_plan(kind, result.run_id, write, issued_at=now) for write in writes]
        )
        return result

    async def publish(self, plans: Sequence[DevicePlan]) -> list[str]:
        """Send each plan and wait for its confirm; returns the devices whose plan was not confirmed."""
        outcomes = await asyncio.gather(
            *(
                self._publisher.publish(
                    exchange=routing.DEVICES_EXCHANGE, routing_key=routing.device_plan_key(plan.device_name), body=plan
                )
                for plan in plans
            ),
            return_exceptions=True,
        )
        unpublished = []
        for plan, outcome in zip(plans, outcomes, strict=True):
            if isinstance(outcome, PublishError):
                logger.warning("plan not published", extra={"device": plan.device_name, "error": str(outcome)})
                unpublished.append(plan.device_name)
            elif isinstance(outcome, BaseException):
                raise outcome
        return unpublished


def _tighter(requested: float | None, site_limit: float | None) -> float | None:
    """The lower of two import limits, either of which may be absent."""
    if requested is None:
        return site_limit
    return requested if site_limit is None else min(requested, site_limit)
