"""RPC handlers of the optimizer: the operator endpoints (``routing.OperatorRpc``), forecasts, runs for the CLI.

Each operator request is the JSON of its contract model (``grid_services.OPERATOR_REQUESTS``) and is answered
with an ``OperatorReply`` (the HTTP status and body the gateway answers with): a body the contract refuses, or
a field only the optimizer can check, is a 422 naming the field; nothing to plan with is a 409 with the
reason. A failed solve is a run in state 'failed', answered like any other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from pydantic import BaseModel, ValidationError

from gridloop_common.clock import Clock
from gridloop_common.contracts import SiteParameters
from gridloop_common.contracts.forecasts import ExternalForecastRequest
from gridloop_common.contracts.grid_services import (
    OPERATOR_REQUESTS,
    DayAheadCoordinationRequest,
    FlatTariffRequest,
    MpcRequest,
    MpcStopRequest,
    OperatorReply,
    OptimizationStatusRequest,
    ShiftConsumptionTariffRequest,
    TimeOfUseTariffRequest,
)
from gridloop_common.contracts.routing import RoutingKeys
from gridloop_common.messaging import Delivery, PoisonMessage
from optimizer.mpc import MpcService
from optimizer.planning_runs import PlanningRun, Refusal, SiteHorizon
from optimizer.repository import ForecastRepository, RunKind, RunRecord, SitesUnavailable
from optimizer.tariffs import DEFAULT_STEP, InvalidTariff, LocalDay, compile_tariff, day_prices, local_day

__all__ = ["RUNS_LIST", "RUNS_SHOW", "STATUS", "Handlers", "put_external_forecast", "run_json"]

STATUS: Final = "optimizer.status"
# `gridloop plans` (tools/cli): the recent runs, and one run's plans.
RUNS_LIST: Final = RoutingKeys.OPTIMIZER_RUNS_LIST
RUNS_SHOW: Final = RoutingKeys.OPTIMIZER_RUNS_SHOW
_DAY_AHEAD_STEPS: Final = 144
_STATUS_RUNS: Final = 20


def _validation_summary(error: ValidationError) -> str:
    # Each problem with the field it is about, e.g. "values.3: Input should be a finite number".
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'body'}: {detail['msg']}" for detail in error.errors()[:5]
    )


def _field_errors(error: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(part) for part in detail["loc"]) or "body", "message": detail["msg"]}
        for detail in error.errors()[:10]
    ]


def _refused(refusal: Refusal) -> OperatorReply:
    errors = None if refusal.field is None else [{"field": refusal.field, "message": refusal.message}]
    return OperatorReply.refused(refusal.status, refusal.error, refusal.message, errors=errors)


def run_json(run: RunRecord) -> dict[str, Any]:
    """A run as the status endpoint and the CLI show it.

    How many of its setpoints devices applied is not included: that is in the scheduler's schema
    (scheduler.device_outcomes), which no other service reads (docs/architecture.md).
    """
    return {
        "run_id": str(run.run_id),
        "kind": run.kind.value,
        "scope": None if run.scope is None else list(run.scope),
        "state": run.state.value,
        "reason": run.reason,
        "objective": run.objective,
        "build_ms": run.build_ms,
        "solve_ms": run.solve_ms,
        "violations": run.violations,
        "started_at": run.started_at.isoformat(),
        "finished_at": None if run.finished_at is None else run.finished_at.isoformat(),
        "day": None if run.day is None else run.day.isoformat(),
        "iteration": run.iteration,
        "tariff_id": None if run.tariff_id is None else str(run.tariff_id),
    }


def _first_step(day: LocalDay, now: datetime) -> int:
    """The index of the day's step holding ``now`` (0 before the day): the steps already over are not planned."""
    if now <= day.start:
        return 0
    return (now - day.start) // day.step


class Handlers:
    """Serves the optimizer's RPC queue (``serve``), chosen by routing key."""

    def __init__(self, *, planning: PlanningRun, mpc: MpcService, forecasts: ForecastRepository, clock: Clock) -> None:
        self._planning = planning
        self._mpc = mpc
        self._forecasts = forecasts
        self._clock = clock

    async def serve(self, delivery: Delivery) -> bytes:
        """Answer one RPC request."""
        key = delivery.routing_key
        now = self._clock.now()
        if key == STATUS:
            return json.dumps(
                {"service": "optimizer", "status": "ready", "mpc_sessions": len(self._mpc.active())}
            ).encode()
        if key == RoutingKeys.OPTIMIZER_FORECASTS_PUT:
            return await put_external_forecast(delivery, self._forecasts, now=now)
        if key == RUNS_LIST:
            return await self._runs_list(delivery)
        if key == RUNS_SHOW:
            return await self._runs_show(delivery)
        model = OPERATOR_REQUESTS.get(key)
        if model is None:
            raise PoisonMessage(f"unknown optimizer request {key!r}")
        reply = await self.operator(key, delivery.body, now=now)
        return reply.model_dump_json().encode()

    async def operator(self, key: str, body: bytes, *, now: datetime) -> OperatorReply:
        """One operator request (``OperatorRpc``), as the gateway forwards it."""
        try:
            request: BaseModel = OPERATOR_REQUESTS[key].model_validate_json(body or b"{}")
            if isinstance(request, MpcRequest):
                request = request.resolved(now)
        except ValidationError as error:
            return OperatorReply.refused(
                422, "invalid_request", _validation_summary(error), errors=_field_errors(error)
            )
        try:
            if isinstance(request, MpcRequest):
                return await self._calculate_mpc(request, now)
            if isinstance(request, MpcStopRequest):
                return OperatorReply(body=await self._mpc.stop(request.site, now=now))
            if isinstance(request, DayAheadCoordinationRequest):
                return await self._coordinate_day_ahead(request, now)
            if isinstance(request, OptimizationStatusRequest):
                return await self._optimization_status(request)
            if isinstance(request, FlatTariffRequest | TimeOfUseTariffRequest | ShiftConsumptionTariffRequest):
                return await self._tariff(request, now)
        except Refusal as refusal:
            return _refused(refusal)
        except SitesUnavailable:
            return OperatorReply.refused(
                409, "sites_unavailable", "the site tables (flux.mg_sites) are not there yet: run `gridloop migrate`"
            )
        raise PoisonMessage(f"no handler for {key!r}")  # pragma: no cover - every OperatorRpc key is handled above

    # ---- sites in scope ----

    async def _sites(self, scope: Sequence[str] | None) -> list[SiteParameters]:
        lookup = await self._planning.optimizer.sites(scope)
        if lookup.refused:
            name, error = next(iter(lookup.refused.items()))
            raise Refusal(409, "site_refused", f"site {name}: {error}", field="site")
        if scope is not None:
            unknown = [name for name in scope if name not in lookup.found]
            if unknown:
                raise Refusal(422, "invalid_request", f"site: unknown site {unknown[0]!r}", field="site")
        if not lookup.found:
            raise Refusal(409, "no_sites", "no site is registered: nothing to plan")
        return list(lookup.found.values())

    # ---- tariffs ----

    async def _tariff(
        self, request: FlatTariffRequest | TimeOfUseTariffRequest | ShiftConsumptionTariffRequest, now: datetime
    ) -> OperatorReply:
        sites = await self._sites(request.site)
        try:
            tariff = compile_tariff(request, now=now, scope=request.site)
            days = {site.name: local_day(tariff.day, site.zone) for site in sites}
            prices = {site.name: day_prices(tariff, site.zone) for site in sites}
        except InvalidTariff as error:
            raise Refusal(422, "invalid_request", f"{error.field}: {error.message}", field=error.field) from error
        for site in sites:
            if days[site.name].end <= now:
                raise Refusal(
                    422,
                    "invalid_request",
                    f"date: {tariff.day.isoformat()} is already over at site {site.name} ({site.timezone})",
                    field="date",
                )
        stored = await self._planning.optimizer.store_tariff(tariff, prices)
        horizons = []
        for site in sites:
            day = days[site.name]
            first = _first_step(day, now)
            vector = prices[site.name][first:]
            horizons.append(
                SiteHorizon(
                    site=site,
                    start=day.start + first * day.step,
                    step=day.step,
                    prices=vector,
                    import_limits=[None] * len(vector),
                    kept_steps=len(vector),
                )
            )
        result = await self._planning.run(
            kind=RunKind.TARIFF,
            scope=request.site,
            horizons=horizons,
            now=now,
            day=tariff.day,
            tariff_id=stored.tariff_id,
        )
        distinct = {tuple(vector) for vector in prices.values()}
        return OperatorReply(
            body={
                "tariff_id": str(stored.tariff_id),
                "date": tariff.day.isoformat(),
                # One vector when every site's is the same (the same time zone), else one per site.
                "prices": next(iter(prices.values())) if len(distinct) == 1 else dict(prices),
                **result.summary(),
                "sites": result.sites,
            }
        )

    # ---- day-ahead coordination ----

    async def _coordinate_day_ahead(self, request: DayAheadCoordinationRequest, now: datetime) -> OperatorReply:
        sites = await self._sites(request.site)
        horizons = []
        days = {}
        for site in sites:
            day = (
                request.date.date()
                if request.date is not None
                else (now.astimezone(site.zone) + timedelta(days=1)).date()
            )
            try:
                local = local_day(day, site.zone, step=DEFAULT_STEP)
            except InvalidTariff as error:
                raise Refusal(422, "invalid_request", f"{error.field}: {error.message}", field="date") from error
            if local.end <= now:
                raise Refusal(
                    422, "invalid_request", f"date: {day.isoformat()} is already over at site {site.name}", field="date"
                )
            if request.prices is not None:
                if local.steps != _DAY_AHEAD_STEPS:
                    raise Refusal(
                        422,
                        "invalid_request",
                        f"prices: {day.isoformat()} has {local.steps} ten-minute steps at site {site.name}"
                        f" (a daylight-saving change), not {_DAY_AHEAD_STEPS}",
                        field="prices",
                    )
                vector = list(request.prices)
            else:
                stored = (await self._planning.optimizer.tariffs_in_force([site.name], day)).get(site.name)
                if stored is None:
                    raise Refusal(
                        409,
                        "no_prices",
                        f"no prices for site {site.name} on {day.isoformat()}: the body has none, no tariff is in"
                        " force for that day, and market data (flux.market_data) is not read by the optimizer yet",
                        field="prices",
                    )
                vector = stored.prices.get(site.name) or day_prices(stored.tariff, site.zone)
            first = _first_step(local, now)
            days[site.name] = day
            horizons.append(
                SiteHorizon(
                    site=site,
                    start=local.start + first * local.step,
                    step=local.step,
                    prices=vector[first:],
                    import_limits=[None] * (len(vector) - first),
                    kept_steps=len(vector) - first,
                )
            )
        first_day = days[sites[0].name]
        result = await self._planning.run(
            kind=RunKind.DAY_AHEAD,
            scope=request.site,
            horizons=horizons,
            now=now,
            day=first_day,
            iteration=request.iteration,
        )
        return OperatorReply(
            body={
                **result.summary(),
                "iteration": request.iteration,
                "date": first_day.isoformat(),
                "sites": [
                    {
                        "site": entry["site"],
                        "date": days[entry["site"]].isoformat(),
                        "starts_at": entry["starts_at"],
                        "planned_import_kw": entry["import_kw"],
                        "cost": entry["cost"],
                        "devices": entry["devices"],
                        "violations": entry["violations"],
                    }
                    for entry in result.sites
                ],
            }
        )

    # ---- MPC ----

    async def _calculate_mpc(self, request: MpcRequest, now: datetime) -> OperatorReply:
        sites = await self._sites(request.site)
        result = await self._mpc.start(request, sites, now=now)
        return OperatorReply(
            body={
                **result.summary(),
                "start": None if request.start is None else request.start.isoformat(),
                "stop": None if request.stop is None else request.stop.isoformat(),
                "interval": request.interval,
                "sites": [
                    {
                        "site": entry["site"],
                        "starts_at": entry["starts_at"],
                        "import_kw": entry["import_kw"],
                        "devices": entry["devices"],
                        "violations": entry["violations"],
                    }
                    for entry in result.sites
                ],
            }
        )

    # ---- status and runs ----

    async def _optimization_status(self, request: OptimizationStatusRequest) -> OperatorReply:
        if request.run_id is not None:
            try:
                run_id = UUID(request.run_id)
            except ValueError:
                raise Refusal(422, "invalid_request", "run_id: not a run id (a UUID)", field="run_id") from None
            runs = await self._planning.optimizer.runs(run_id=run_id, limit=1)
            if not runs:
                raise Refusal(404, "not_found", f"run_id: no run {request.run_id}", field="run_id")
            return OperatorReply(body={"runs": [run_json(run) for run in runs]})
        runs = await self._planning.optimizer.runs(limit=_STATUS_RUNS * 5 if request.site else _STATUS_RUNS)
        if request.site is not None:
            wanted = set(request.site)
            runs = [run for run in runs if run.scope is None or wanted & set(run.scope)][:_STATUS_RUNS]
        return OperatorReply(body={"runs": [run_json(run) for run in runs]})

    async def _runs_list(self, delivery: Delivery) -> bytes:
        request = delivery.json() if delivery.body else {}
        limit = request.get("limit", 20) if isinstance(request, dict) else 20
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 500:
            raise PoisonMessage("limit: must be an integer from 1 to 500")
        runs = await self._planning.optimizer.runs(limit=limit)
        return json.dumps({"runs": [run_json(run) for run in runs]}).encode()

    async def _runs_show(self, delivery: Delivery) -> bytes:
        request = delivery.json() if delivery.body else {}
        try:
            run_id = UUID(str(request.get("run_id") if isinstance(request, dict) else None))
        except ValueError:
            raise PoisonMessage("run_id: not a run id (a UUID)") from None
        runs = await self._planning.optimizer.runs(run_id=run_id, limit=1)
        if not runs:
            raise PoisonMessage(f"run_id: no run {run_id}")
        plans = await self._planning.optimizer.plans_of_run(run_id)
        details = await self._planning.planning.run_details(run_id)
        return json.dumps(
            {
                "run": run_json(runs[0]),
                "sites": details or [],
                "plans": [
                    {
                        "site": plan.site,
                        "device": plan.device,
                        "version": plan.version,
                        "starts_at": plan.starts_at.isoformat(),
                        "step_seconds": int(plan.step.total_seconds()),
                        "setpoints_kw": plan.setpoints_kw,
                    }
                    for plan in plans
                ],
            }
        ).encode()


async def put_external_forecast(delivery: Delivery, forecasts: ForecastRepository, *, now: datetime) -> bytes:
    """``optimizer.forecasts.put`` (RoutingKeys.OPTIMIZER_FORECASTS_PUT): store an external load or PV forecast.

    The body is an ``ExternalForecastRequest``; a body it refuses, or a site with no registered device, is a
    PoisonMessage naming the field, which the RPC layer returns to the caller as the error. From ``now`` on
    it wins over the forecast from telemetry wherever it covers a step, until it expires. Replies with what
    was stored.
    """
    try:
        request = ExternalForecastRequest.model_validate_json(delivery.body)
    except ValidationError as error:
        raise PoisonMessage(f"invalid forecast: {_validation_summary(error)}") from error
    if not await forecasts.site_exists(request.site):
        # Stored, it would wait silently for a site that never plans.
        raise PoisonMessage(f"invalid forecast: site: no device is registered at site {request.site!r}")
    stored = await forecasts.store_external(request, received_at=now)
    return json.dumps(
        {
            "forecast_id": stored.forecast_id,
            "site": request.site,
            "quantity": request.quantity.value,
            "start": request.start.isoformat(),
            "end": stored.end.isoformat(),
            "step": request.step,
            "steps": len(request.values),
            "expires_at": stored.expires_at.isoformat(),
        }
    ).encode()
