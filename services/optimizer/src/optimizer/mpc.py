"""The receding-horizon MPC of POST /calculate_mpc: plan at once, re-plan every interval from live state.

An MPC is a row of optimizer.mpc_sessions (the request, its scope, when it stops) plus, while this process
runs it, a task that wakes at each step boundary and re-plans (``MpcService.tick``). Each plan is a run of
kind 'mpc'; it covers as many steps as the first one did (the request's start to stop), so every re-plan
has the same model shape and reuses the session's ``PlanSolver`` model with a warm start; only the steps
before the stop are stored and sent (a step past the last price takes the last price). The first step's load
is the site meter's reading net of the batteries when it is fresh, the SoC the batteries' latest readings.

Stopping (POST /calculate_mpc without a body) ends the session, marks its runs stopped and sends each
device an empty plan, which returns it to its default. On start-up the service resumes every session still
active: runs left 'running' by the previous process are marked failed, a session past its stop is marked
finished, the others re-plan at once and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from gridloop_common.clock import Clock
from gridloop_common.contracts import SiteParameters
from gridloop_common.contracts.grid_services import MpcRequest
from optimizer.planning_runs import PlanningRun, Refusal, RunResult, SiteHorizon, SolverLike, empty_plan
from optimizer.repository import RunKind
from optimizer.site_problems import step_values
from optimizer.tariffs import local_day, mean_price

__all__ = [
    "MpcService",
    "expected_vehicle_soc",
    "horizon_steps",
    "kept_steps",
    "next_replan",
    "plan_start",
]

logger = logging.getLogger(__name__)

_STOPPED_BY_REQUEST: Final = "stopped by request"


def _interval(request: MpcRequest) -> timedelta:
    return timedelta(minutes=request.interval)


def _window(request: MpcRequest) -> tuple[datetime, datetime]:
    # The gateway sends resolved requests; a request stored before resolution would have no window.
    if request.start is None or request.stop is None:
        raise ValueError("an MPC request needs start and stop (MpcRequest.resolved)")
    return request.start, request.stop


def horizon_steps(request: MpcRequest) -> int:
    """Steps of every plan of this MPC: those from its start to its stop, the last one possibly partial."""
    start, stop = _window(request)
    return max(1, math.ceil((stop - start) / _interval(request)))


def plan_start(request: MpcRequest, now: datetime) -> datetime:
    """The start of the step a plan made at ``now`` begins with: the step of the MPC's grid holding ``now``
    (the grid starts at the request's start), or the start itself while it is ahead."""
    start, _ = _window(request)
    if now <= start:
        return start
    return start + ((now - start) // _interval(request)) * _interval(request)


def kept_steps(request: MpcRequest, start: datetime) -> int:
    """How many steps from ``start`` begin before the stop (0: the MPC is over)."""
    _, stop = _window(request)
    return max(0, math.ceil((stop - start) / _interval(request)))


def next_replan(request: MpcRequest, planned_from: datetime) -> datetime | None:
    """When to plan next after a plan starting at ``planned_from``: the next step; None once that is past stop."""
    _, stop = _window(request)
    due = planned_from + _interval(request)
    return None if due >= stop else due


@dataclass
class _LiveMpc:
    session_id: UUID
    request: MpcRequest
    scope: tuple[str, ...] | None
    solver: SolverLike
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    planned_from: datetime | None = None
    # Each battery's SoC when this MPC first planned it: every re-plan ends at least there. A re-plan aiming
    # at the SoC it starts from would never spend what an earlier step stored (export earns nothing, so
    # spending now would need refilling within the horizon), and the MPC would pay to charge for nothing.
    soc_targets: dict[str, float] = field(default_factory=dict)
    # Each car's SoC path in the last plan: (its start, step, SoC % at the end of each step). No charger
    # telemetry is stored yet, so a re-plan starts a car from where the last plan expected it to be now,
    # not from metadata.ev.initial_soc_pct again (which would forget what the earlier steps charged or gave).
    vehicle_paths: dict[str, tuple[datetime, timedelta, list[float]]] = field(default_factory=dict)


def expected_vehicle_soc(
    paths: Mapping[str, tuple[datetime, timedelta, list[float]]], at: datetime
) -> dict[str, float]:
    """Each car's SoC at ``at`` as its last plan expected it (absent where that plan does not reach ``at``)."""
    expected = {}
    for device, (start, step, soc_pct) in paths.items():
        index = round((at - start) / step) - 1  # soc_pct[i] is the SoC at the end of step i
        if 0 <= index < len(soc_pct):
            expected[device] = soc_pct[index]
    return expected


class MpcService:
    """The MPCs this process runs, one per scope."""

    def __init__(self, planning: PlanningRun, clock: Clock) -> None:
        self._planning = planning
        self._clock = clock
        self._live: dict[UUID, _LiveMpc] = {}

    def active(self) -> list[UUID]:
        return list(self._live)

    async def start(self, request: MpcRequest, sites: Sequence[SiteParameters], *, now: datetime) -> RunResult:
        """Start (or replace) the MPC of the request's scope and plan at once; re-plans run until its stop.

        A request that cannot be planned (no price for a step: 409; a stop already past: 422) is refused.
        """
        scope = None if request.site is None else tuple(sorted(set(request.site)))
        # Refused before anything changes, so the MPC it would replace keeps running.
        if not await self._horizons(request, sites, now):
            raise Refusal(422, "invalid_request", "stop: the MPC's stop has already passed", field="stop")
        _, stop = _window(request)
        repository = self._planning.planning
        session, replaced = await repository.start_mpc_session(
            scope, request.model_dump(mode="json"), at=now, stops_at=stop
        )
        for old in replaced:
            await self._forget(old.session_id)
        replaced_runs = await self._planning.optimizer.stop_runs(
            RunKind.MPC, scope, now, reason="replaced by a new MPC"
        )
        live = _LiveMpc(session.session_id, request, scope, self._planning.new_solver())
        self._live[session.session_id] = live
        try:
            result = await self._plan(live, sites, now)
        except BaseException:
            # No first plan, no MPC: a session left active would be resumed by the next process.
            self._live.pop(session.session_id, None)
            await repository.end_mpc_session(
                session.session_id, at=now, state="stopped", reason="its first plan could not be made"
            )
            raise
        if result is None:  # the stop passed while it was being stored
            raise Refusal(422, "invalid_request", "stop: the MPC's stop has already passed", field="stop")
        # A device the replaced MPC planned and this one does not (electric_storage or electric_vehicle false,
        # a device left out) returns to its default now rather than when the old plan's steps run out.
        planned = {device for _, device in result.devices}
        orphans = await self._devices_of(replaced_runs)
        result.unpublished += await self._planning.publish(
            [
                empty_plan(RunKind.MPC, run_id, device, issued_at=now)
                for device, run_id in sorted(orphans.items())
                if device not in planned
            ]
        )
        live.task = asyncio.create_task(self._run(live), name=f"mpc-{session.session_id}")
        return result

    async def tick(self, session_id: UUID, now: datetime) -> RunResult | None:
        """Re-plan one MPC from live state as of ``now``; None when it is not running here or is over."""
        live = self._live.get(session_id)
        if live is None:
            return None
        lookup = await self._planning.optimizer.sites(None if live.scope is None else list(live.scope))
        if not lookup.found:
            # Its sites are gone from the registry: this re-plan is skipped, the MPC carries on until its stop.
            raise Refusal(409, "no_sites", "no site of this MPC's scope is registered any more")
        return await self._plan(live, list(lookup.found.values()), now)

    async def stop(self, scope: Sequence[str] | None, *, now: datetime) -> dict[str, Any]:
        """Stop the MPC of ``scope`` (exactly that scope): its runs are marked stopped and each device it
        planned gets an empty plan, which returns it to its default."""
        key = None if scope is None else tuple(sorted(set(scope)))
        ended = await self._planning.planning.end_mpc_sessions(key, at=now, reason=_STOPPED_BY_REQUEST)
        for session in ended:
            await self._forget(session.session_id)
        run_ids = await self._planning.optimizer.stop_runs(RunKind.MPC, key, now, reason=_STOPPED_BY_REQUEST)
        devices = await self._devices_of(run_ids)
        unpublished = await self._planning.publish(
            [empty_plan(RunKind.MPC, run_id, device, issued_at=now) for device, run_id in sorted(devices.items())]
        )
        body: dict[str, Any] = {
            "stopped": bool(ended or run_ids),
            "site": None if key is None else list(key),
            "sessions": [str(session.session_id) for session in ended],
            "runs": [str(run_id) for run_id in run_ids],
            "devices": sorted(devices),
        }
        if not ended and not run_ids:
            body["message"] = "no MPC was running for this scope"
        if unpublished:
            body["unpublished"] = unpublished
        return body

    async def _devices_of(self, run_ids: Sequence[UUID]) -> dict[str, UUID]:
        """The devices the runs planned, each with the run that planned it."""
        devices: dict[str, UUID] = {}
        for run_id in run_ids:
            for plan in await self._planning.optimizer.plans_of_run(run_id):
                devices[plan.device] = run_id
        return devices

    async def resume(self, *, now: datetime) -> list[UUID]:
        """After a restart: fail the runs nobody is solving, finish the MPCs past their stop, resume the others."""
        repository = self._planning.planning
        await repository.fail_unfinished_runs(now, "the optimizer restarted while it planned")
        resumed = []
        for session in await repository.active_mpc_sessions():
            request = MpcRequest.model_validate(session.request)
            if now >= session.stops_at:
                await repository.end_mpc_session(
                    session.session_id, at=now, state="finished", reason="reached its stop"
                )
                continue
            live = _LiveMpc(session.session_id, request, session.scope, self._planning.new_solver())
            self._live[session.session_id] = live
            try:
                await self.tick(session.session_id, now)
            except Refusal as refusal:
                logger.warning(
                    "resumed MPC could not plan", extra={"session": str(session.session_id), "reason": refusal.message}
                )
            except Exception:  # the next interval tries again; start-up must not fail on one MPC
                logger.exception("resumed MPC could not plan", extra={"session": str(session.session_id)})
            live.task = asyncio.create_task(self._run(live), name=f"mpc-{session.session_id}")
            resumed.append(session.session_id)
        return resumed

    async def close(self) -> None:
        """Stop this process's MPC tasks (the sessions stay active in the database, for the next process)."""
        for session_id in list(self._live):
            await self._forget(session_id)

    async def _forget(self, session_id: UUID) -> None:
        live = self._live.pop(session_id, None)
        if live is None or live.task is None or live.task is asyncio.current_task():
            return
        live.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await live.task

    async def _plan(self, live: _LiveMpc, sites: Sequence[SiteParameters], now: datetime) -> RunResult | None:
        async with live.lock:
            horizons = await self._horizons(live.request, sites, now)
            if not horizons:
                await self._planning.planning.end_mpc_session(
                    live.session_id, at=now, state="finished", reason="reached its stop"
                )
                self._live.pop(live.session_id, None)
                return None
            start = horizons[0].start
            result = await self._planning.run(
                kind=RunKind.MPC,
                scope=live.scope,
                horizons=horizons,
                now=now,
                solver=live.solver,
                soc_targets=live.soc_targets,
                vehicle_soc=expected_vehicle_soc(live.vehicle_paths, start),
            )
            for device, soc in result.starting_soc.items():
                live.soc_targets.setdefault(device, soc)
            live.vehicle_paths = {
                device["name"]: (
                    datetime.fromisoformat(site["starts_at"]),
                    timedelta(seconds=site["step_seconds"]),
                    list(device["soc_pct"]),
                )
                for site in result.sites
                for device in site["devices"]
                if device["type"] != "bess"
            }
            live.planned_from = start
            await self._planning.planning.record_mpc_run(live.session_id, result.run_id, start)
            return result

    async def _run(self, live: _LiveMpc) -> None:
        while True:
            due = None if live.planned_from is None else next_replan(live.request, live.planned_from)
            if due is None:
                _, stop = _window(live.request)
                await self._sleep_until(stop)
                await self._planning.planning.end_mpc_session(
                    live.session_id, at=self._clock.now(), state="finished", reason="reached its stop"
                )
                self._live.pop(live.session_id, None)
                return
            await self._sleep_until(due)
            try:
                if await self.tick(live.session_id, max(due, self._clock.now())) is None:
                    return  # over (its stop passed) or stopped: the session is ended already
            except Refusal as refusal:
                # No price for a step any more: this re-plan is skipped; the last plan's steps expire.
                logger.warning(
                    "MPC re-plan refused", extra={"session": str(live.session_id), "reason": refusal.message}
                )
                live.planned_from = due
            except Exception:  # one failed re-plan must not end the MPC
                logger.exception("MPC re-plan failed", extra={"session": str(live.session_id)})
                live.planned_from = due

    async def _sleep_until(self, moment: datetime) -> None:
        delay = (moment - self._clock.now()).total_seconds()
        if delay > 0:
            await self._clock.sleep(delay)

    async def _horizons(self, request: MpcRequest, sites: Sequence[SiteParameters], now: datetime) -> list[SiteHorizon]:
        start = plan_start(request, now)
        kept = kept_steps(request, start)
        if kept == 0:
            return []
        step = _interval(request)
        starts = [start + index * step for index in range(horizon_steps(request))]
        limits = step_values(request.power_limit, starts)
        horizons = []
        for site in sites:
            prices = await self._prices(site, request.prices, starts, step)
            horizons.append(
                SiteHorizon(
                    site=site,
                    start=start,
                    step=step,
                    prices=prices,
                    import_limits=limits,
                    kept_steps=kept,
                    live_load=True,
                    with_batteries=request.electric_storage,
                    with_vehicles=request.electric_vehicle,
                )
            )
        return horizons

    async def _prices(
        self, site: SiteParameters, points: Mapping[datetime, float], starts: Sequence[datetime], step: timedelta
    ) -> list[float]:
        """The body's price at each step; before its first instant, the tariff in force; else refused (409)."""
        prices = step_values(points, starts)
        if all(price is not None for price in prices):
            return [float(price) for price in prices if price is not None]
        days = sorted(
            {begin.astimezone(site.zone).date() for begin, price in zip(starts, prices, strict=True) if price is None}
        )
        tariffs = {
            day: (await self._planning.optimizer.tariffs_in_force([site.name], day)).get(site.name) for day in days
        }
        answer: list[float] = []
        for begin, price in zip(starts, prices, strict=True):
            if price is not None:
                answer.append(price)
                continue
            stored = tariffs.get(begin.astimezone(site.zone).date())
            if stored is None:
                raise Refusal(
                    409,
                    "no_prices",
                    f"no price for {site.name} at {begin.isoformat()}: the body's prices start later and no tariff"
                    " is in force for that day (market data, flux.market_data, is not read by the optimizer yet)",
                    field="prices",
                )
            day_end = local_day(stored.tariff.day, site.zone).end
            answer.append(mean_price(stored.tariff, site.zone, begin, min(begin + step, day_end)))
        return answer
