"""A site's planning problem from what the registry and the readings say, and a plan as the answers show it.

Pure: the caller reads the registry, the latest readings, the forecasts and the prices; these functions decide
which batteries can be planned (``plannable_batteries``), build the ``SiteProblem`` and turn its ``Plan`` into
the per-site answer of the planning endpoints (docs/design.md §8) and into the plans devices receive.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gridloop_common.contracts.device_metadata import DeviceMetadata, InvalidDeviceMetadata
from gridloop_common.contracts.flux import DeviceType
from optimizer.problem import Battery, ElectricVehicle, EvKind, Plan, SiteProblem
from optimizer.repository import BatteryState, MeterState, PlanWrite, RegisteredBattery, RegisteredCharger

__all__ = [
    "LeftOut",
    "SiteBatteries",
    "SiteVehicles",
    "live_load_kw",
    "plan_writes",
    "plannable_batteries",
    "plannable_vehicles",
    "site_answer",
    "site_problem",
    "step_values",
    "violation_records",
]

# Rounding of the numbers in answers: watts and tenths of a percent are more than any device resolves.
_KW_DIGITS = 4
_PCT_DIGITS = 2


@dataclass(frozen=True)
class LeftOut:
    """A battery the plan does not include, and why (the answer reports it; its limits are never guessed)."""

    site: str
    device: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"site": self.site, "device": self.device, "reason": self.reason}


@dataclass(frozen=True)
class SiteBatteries:
    """The batteries of each site that can be planned, and those left out."""

    by_site: dict[str, list[Battery]] = field(default_factory=dict)
    left_out: list[LeftOut] = field(default_factory=list)


def plannable_batteries(
    registered: Sequence[RegisteredBattery],
    states: Mapping[str, BatteryState],
    soc_targets: Mapping[str, float] | None = None,
) -> SiteBatteries:
    """A ``Battery`` for each registered battery whose metadata gives its capacity and power and that has a
    state-of-charge reading; the others are left out with the reason (the field the contract names).

    Each ends the horizon with at least ``soc_targets[name]`` (%) when given, else the SoC it starts with.
    """
    found = SiteBatteries()
    for device in registered:
        try:
            metadata = DeviceMetadata.from_registry(device.metadata)
        except InvalidDeviceMetadata as error:
            found.left_out.append(LeftOut(device.site, device.name, error.reason))
            continue
        if metadata.capacity_kwh is None:
            found.left_out.append(LeftOut(device.site, device.name, "metadata.capacity_kwh is missing"))
            continue
        if metadata.max_power_kw is None:
            found.left_out.append(LeftOut(device.site, device.name, "metadata.max_power_kw is missing"))
            continue
        state = states.get(device.name)
        if state is None:
            found.left_out.append(LeftOut(device.site, device.name, "no state-of-charge reading yet"))
            continue
        health = (metadata.state_of_health_percentage or 100.0) / 100.0
        soc = min(100.0, max(0.0, state.soc_pct))
        battery = Battery(
            name=device.name,
            capacity_kwh=metadata.capacity_kwh * health,
            max_charge_kw=metadata.max_power_kw,
            max_discharge_kw=metadata.max_power_kw,
            soc_initial_pct=soc,
            reserve_pct=metadata.backup_reserve_percentage or 0.0,
            # Ends the horizon with at least the energy it starts with (soft): without a feed-in price,
            # energy sent to the grid is worth nothing, and a plan free to drain the battery may do so for
            # no gain. So a plan stores energy cheap and spends it dear, and leaves the battery as full.
            soc_target_pct=min(100.0, max(0.0, (soc_targets or {}).get(device.name, soc))),
        )
        found.by_site.setdefault(device.site, []).append(battery)
    return found


# The charger types the optimizer plans, and what each can do (problem.EvKind).
_EV_KINDS = {
    DeviceType.ON_OFF_EV_CHARGER: EvKind.ON_OFF,
    DeviceType.ELECTRIC_VEHICLE_V1G: EvKind.V1G,
    DeviceType.ELECTRIC_VEHICLE_V2G: EvKind.V2G,
}
_DEVICE_TYPES = {kind: device_type for device_type, kind in _EV_KINDS.items()}
# As the device-agent's charger path reads metadata (services/device-agent/README.md, "EV chargers"): 230 V a
# phase, 3 phases and 6 A minimum when absent, and a V2G car's minimum SoC from backup_reserve_percentage, 20 %
# when absent; so the plan never asks for a power the agent would turn into something else.
_VOLTAGE_V = 230.0
_DEFAULT_PHASES = 3
_DEFAULT_MIN_CURRENT_A = 6.0
_DEFAULT_V2G_MIN_SOC_PCT = 20.0


@dataclass(frozen=True)
class SiteVehicles:
    """The EV chargers of each site that can be planned (with their car), and those left out."""

    by_site: dict[str, list[ElectricVehicle]] = field(default_factory=dict)
    left_out: list[LeftOut] = field(default_factory=list)


def plannable_vehicles(
    registered: Sequence[RegisteredCharger],
    soc_readings: Mapping[str, float],
    *,
    start: datetime,
    step: timedelta,
    zones: Mapping[str, ZoneInfo],
) -> SiteVehicles:
    """An ``ElectricVehicle`` for each registered charger whose metadata gives its rated power and its car
    (``metadata.ev``: capacity, departure, target; arrival optional); the others are left out with the reason.

    The car's SoC is the charger's latest reading (``soc_readings``, by device; none until charger telemetry
    is stored) or else ``metadata.ev.initial_soc_pct``; with neither the charger is left out, never guessed.
    The plug-in window, on the grid of ``step`` from ``start`` in the site's zone: the next ``departure`` at or
    after ``start``, and from the ``arrival`` before it (absent, or already past: from ``start``). The target
    holds at the end of the last step that ends by the departure.
    """
    found = SiteVehicles()
    for device in registered:
        kind = _EV_KINDS.get(DeviceType(device.device_type)) if device.device_type in _EV_KINDS else None
        if kind is None:
            found.left_out.append(LeftOut(device.site, device.name, f"{device.device_type} is not an EV charger"))
            continue
        try:
            metadata = DeviceMetadata.from_registry(device.metadata)
        except InvalidDeviceMetadata as error:
            found.left_out.append(LeftOut(device.site, device.name, error.reason))
            continue
        if metadata.max_power_kw is None:
            found.left_out.append(LeftOut(device.site, device.name, "metadata.max_power_kw is missing"))
            continue
        car = metadata.ev
        if car is None:
            found.left_out.append(
                LeftOut(device.site, device.name, "metadata.ev is missing (the car's capacity, departure, target)")
            )
            continue
        soc = soc_readings.get(device.name, car.initial_soc_pct)
        if soc is None:
            found.left_out.append(
                LeftOut(
                    device.site,
                    device.name,
                    "no SoC: the charger has reported none and metadata.ev.initial_soc_pct is missing",
                )
            )
            continue
        zone = zones.get(device.site, ZoneInfo("UTC"))
        arrival_at, departure_at = _plug_in_window(start, car.arrival, car.departure, zone)
        step_s = step.total_seconds()
        arrival_step = max(0, math.ceil((arrival_at - start).total_seconds() / step_s - 1e-9))
        departure_step = max(arrival_step, math.floor((departure_at - start).total_seconds() / step_s + 1e-9))
        rated = metadata.max_power_kw
        minimum = (metadata.min_current_a or _DEFAULT_MIN_CURRENT_A) * (metadata.phases or _DEFAULT_PHASES)
        minimum_kw = min(rated, minimum * _VOLTAGE_V / 1000)
        vehicle = ElectricVehicle(
            name=device.name,
            kind=kind,
            capacity_kwh=car.capacity_kwh,
            soc_initial_pct=min(100.0, max(0.0, soc)),
            max_power_kw=rated,
            min_power_kw=minimum_kw,
            arrival_step=arrival_step,
            departure_step=departure_step,
            target_soc_pct=car.target_soc_pct,
            soc_min_pct=(
                metadata.backup_reserve_percentage
                if metadata.backup_reserve_percentage is not None
                else _DEFAULT_V2G_MIN_SOC_PCT
            ),
        )
        found.by_site.setdefault(device.site, []).append(vehicle)
    return found


def _plug_in_window(start: datetime, arrival: str | None, departure: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """(when the car is plugged in, when it leaves): the next `departure` wall-clock time at or after `start`
    and the last `arrival` before it (None: `start`), both as aware instants."""
    local = start.astimezone(zone)
    departure_at = _wall_clock(local.date(), departure, zone)
    if departure_at < start:
        departure_at = _wall_clock(local.date() + timedelta(days=1), departure, zone)
    if arrival is None:
        return start, departure_at
    arrival_at = _wall_clock(departure_at.astimezone(zone).date(), arrival, zone)
    if arrival_at >= departure_at:
        arrival_at = _wall_clock(departure_at.astimezone(zone).date() - timedelta(days=1), arrival, zone)
    return max(arrival_at, start), departure_at


def _wall_clock(day: date, clock: str, zone: ZoneInfo) -> datetime:
    hours, minutes = (int(part) for part in clock.split(":"))
    return datetime.combine(day, time(hours, minutes), tzinfo=zone)


def step_values(points: Mapping[datetime, float], starts: Sequence[datetime]) -> list[float | None]:
    """The value in force at each step start of a ``{from instant: value}`` series (the Grid Services API's
    ``prices`` and ``power_limit``): the value of the latest instant at or before it; None before the first."""
    instants = sorted(points)
    values = [points[instant] for instant in instants]
    answer: list[float | None] = []
    for start in starts:
        index = bisect.bisect_right(instants, start) - 1
        answer.append(values[index] if index >= 0 else None)
    return answer


def live_load_kw(
    meter: MeterState | None,
    states: Mapping[str, BatteryState],
    batteries: Sequence[Battery],
    *,
    pv_kw: float,
    now: datetime,
    fresh_for: timedelta,
) -> float | None:
    """The site's load now, from its meter (import positive) net of its batteries' power, plus the PV behind
    the meter; None when the meter has no reading newer than ``fresh_for`` (the forecast is used then)."""
    if meter is None or now - meter.time > fresh_for:
        return None
    battery_kw = sum(states[battery.name].power_kw for battery in batteries if battery.name in states)
    return max(0.0, meter.power_kw - battery_kw + pv_kw)


def site_problem(
    *,
    start: datetime,
    step: timedelta,
    prices: Sequence[float],
    load_kw: Sequence[float],
    pv_kw: Sequence[float],
    batteries: Sequence[Battery],
    import_limit_kw: Sequence[float | None],
    export_limit_kw: float | None,
    vehicles: Sequence[ElectricVehicle] = (),
) -> SiteProblem:
    """One site's problem. Export earns nothing: none of the endpoints gives a feed-in price, so a battery
    serves its own site rather than the grid. A None import limit is no limit at that step."""
    return SiteProblem.create(
        start=start,
        step_hours=step.total_seconds() / 3600.0,
        import_price=list(prices),
        export_price=[0.0] * len(prices),
        load_kw=[max(0.0, value) for value in load_kw],
        pv_kw=[max(0.0, value) for value in pv_kw],
        batteries=batteries,
        vehicles=vehicles,
        import_limit_kw=[math.inf if limit is None else limit for limit in import_limit_kw],
        export_limit_kw=export_limit_kw,
    )


def violation_records(site: str, plan: Plan, *, start: datetime, step: timedelta) -> list[dict[str, Any]]:
    """The plan's violations as the runs store and the answers show them."""
    return [
        {
            "limit": violation.limit.value,
            "site": site,
            "device": violation.device,
            "step": violation.step,
            "at": (start + violation.step * step).isoformat(),
            "amount": round(violation.amount, _KW_DIGITS),
            "unit": violation.unit,
        }
        for violation in plan.violations
    ]


def site_answer(site: str, plan: Plan, *, start: datetime, step: timedelta, steps: int) -> dict[str, Any]:
    """The per-site part of an answer, over the first ``steps`` steps of the plan (the rest is past the stop);
    ``relaxed: true`` when the MIP found nothing in time and the cars' powers are its LP relaxation, rounded."""
    answer: dict[str, Any] = {
        "site": site,
        "starts_at": start.isoformat(),
        "step_seconds": int(step.total_seconds()),
        "import_kw": [round(float(value), _KW_DIGITS) for value in plan.grid_import_kw[:steps]],
        "cost": round(plan.energy_cost + plan.demand_charge_cost, 6),
        "devices": [
            {
                "name": battery.name,
                "type": "bess",
                "setpoints": [round(float(value), _KW_DIGITS) for value in battery.power_kw[:steps]],
                "soc_pct": [round(float(value), _PCT_DIGITS) for value in battery.soc_pct[1 : steps + 1]],
            }
            for battery in plan.batteries
        ]
        + [
            {
                "name": vehicle.name,
                "type": _DEVICE_TYPES[vehicle.kind].value,
                "setpoints": [round(float(value), _KW_DIGITS) for value in vehicle.power_kw[:steps]],
                "soc_pct": [round(float(value), _PCT_DIGITS) for value in vehicle.soc_pct[1 : steps + 1]],
            }
            for vehicle in plan.vehicles
        ],
        "violations": [
            record for record in violation_records(site, plan, start=start, step=step) if record["step"] < steps
        ],
    }
    if plan.relaxed:
        answer["relaxed"] = True
    return answer


def plan_writes(site: str, plan: Plan, *, start: datetime, step: timedelta, steps: int) -> list[PlanWrite]:
    """Each battery's and car's setpoints over the first ``steps`` steps, as stored and sent to the device."""
    schedules = [(battery.name, battery.power_kw) for battery in plan.batteries]
    schedules += [(vehicle.name, vehicle.power_kw) for vehicle in plan.vehicles]
    return [
        PlanWrite(
            site=site,
            device=name,
            starts_at=start,
            step=step,
            setpoints_kw=[float(value) for value in power[:steps]],
        )
        for name, power in schedules
    ]
