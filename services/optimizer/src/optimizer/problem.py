"""What a plan is asked for (a site problem) and what it answers (a plan), as plain immutable values.

A `SiteProblem` covers N steps of `step_hours` each, step t being `[start + t*dt, start + (t+1)*dt)`. Power is
in kW (mean over the step), energy in kWh, prices in currency/kWh (negative allowed), the demand charge in
currency per kW of the billing period's peak import. Per-step inputs are numpy float arrays of length N; a
scalar given for a limit applies to every step.

Every value is checked on construction and a bad one raises `ProblemError` naming the field, so a caller can
answer 422 (or dead-letter the message) with that name; the solver never sees an inconsistent problem.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

__all__ = [
    "Battery",
    "BatteryPlan",
    "DemandCharge",
    "ElectricVehicle",
    "EvKind",
    "FloatArray",
    "Plan",
    "PlanStatus",
    "ProblemError",
    "SiteProblem",
    "TargetMode",
    "VehiclePlan",
    "ViolatedLimit",
    "Violation",
]

FloatArray = npt.NDArray[np.float64]


class ProblemError(ValueError):
    """A problem that cannot be planned as given; `field` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TargetMode(enum.StrEnum):
    """How the end-of-horizon SoC target binds (always softly: a miss is priced, never infeasible)."""

    AT_LEAST = "at_least"  # ending above the target is free
    EXACT = "exact"  # ending above it is priced like ending below (bess-arbitrage-scenario/1's equality)


@dataclass(frozen=True)
class Battery:
    """One battery, its power measured AC-side at the site bus.

    `soc_min_pct`/`soc_max_pct` bound the SoC at the end of every step; `reserve_pct` is a backup reserve, a
    floor between them that the plan keeps unless the only alternative breaks `soc_min_pct`.
    """

    name: str
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    soc_initial_pct: float
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    soc_min_pct: float = 0.0
    soc_max_pct: float = 100.0
    reserve_pct: float = 0.0
    soc_target_pct: float | None = None
    target_mode: TargetMode = TargetMode.AT_LEAST

    def __post_init__(self) -> None:
        prefix = f"batteries[{self.name}]"
        _require(bool(self.name), f"{prefix}.name", "must not be empty")
        _require(_finite(self.capacity_kwh) and self.capacity_kwh > 0, f"{prefix}.capacity_kwh", "must be > 0")
        for name in ("max_charge_kw", "max_discharge_kw"):
            value = getattr(self, name)
            _require(_finite(value) and value >= 0, f"{prefix}.{name}", "must be >= 0")
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            # Below 0.1 the target penalty (100 x the price scale) might no longer outweigh a kWh's value.
            _require(_finite(value) and 0.1 <= value <= 1, f"{prefix}.{name}", "must be within [0.1, 1]")
        for name in ("soc_initial_pct", "soc_min_pct", "soc_max_pct", "reserve_pct"):
            value = getattr(self, name)
            _require(_finite(value) and 0 <= value <= 100, f"{prefix}.{name}", "must be within [0, 100]")
        _require(self.soc_min_pct <= self.soc_max_pct, f"{prefix}.soc_min_pct", "must be <= soc_max_pct")
        _require(self.reserve_pct <= self.soc_max_pct, f"{prefix}.reserve_pct", "must be <= soc_max_pct")
        if self.soc_target_pct is not None:
            _require(
                _finite(self.soc_target_pct) and 0 <= self.soc_target_pct <= 100,
                f"{prefix}.soc_target_pct",
                "must be within [0, 100]",
            )

    @property
    def reserve_floor_pct(self) -> float:
        """The reserve as it binds: never below `soc_min_pct`."""
        return max(self.reserve_pct, self.soc_min_pct)


class EvKind(enum.StrEnum):
    """What a charger can do with the car plugged in (seed 000's three EV device types)."""

    ON_OFF = "on_off"  # 0 or the rated power, nothing between
    V1G = "v1g"  # 0, or between the minimum and the rated power (charging only)
    V2G = "v2g"  # as V1G, and discharging between the minimum and the rated power


@dataclass(frozen=True)
class ElectricVehicle:
    """A car at its charger: plugged in from the start of step `arrival_step` to the start of step
    `departure_step` (clipped to the horizon; a departure past the horizon holds the target at its end).

    Power is AC at the charger, kW, positive charging. `min_power_kw` is the minimum current as power
    (6 A: 1.38 kW single-phase, 4.14 kW three-phase): a charger runs at 0 or between it and the rated power
    (semi-continuous); for ON_OFF it is the rated power. The departure target is soft (priced shortfall,
    `departure_target`); the power limits, the plug-in window, 0..capacity and, for V2G, discharging only
    from above `soc_min_pct` are hard.
    """

    name: str
    kind: EvKind
    capacity_kwh: float
    soc_initial_pct: float
    max_power_kw: float
    min_power_kw: float = 0.0
    arrival_step: int = 0
    departure_step: int | None = None  # None: plugged in past the horizon
    target_soc_pct: float | None = None
    soc_min_pct: float = 0.0  # V2G never discharges the car below it
    charge_efficiency: float = 0.9
    discharge_efficiency: float = 0.9

    def __post_init__(self) -> None:
        prefix = f"vehicles[{self.name}]"
        _require(bool(self.name), f"{prefix}.name", "must not be empty")
        _require(_finite(self.capacity_kwh) and self.capacity_kwh > 0, f"{prefix}.capacity_kwh", "must be > 0")
        _require(_finite(self.max_power_kw) and self.max_power_kw > 0, f"{prefix}.max_power_kw", "must be > 0")
        _require(
            _finite(self.min_power_kw) and 0 <= self.min_power_kw <= self.max_power_kw,
            f"{prefix}.min_power_kw",
            "must be within [0, max_power_kw]",
        )
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            # At 0.5 or more a kWh missed at departure saves at most 2 S, far below the target tier.
            _require(_finite(value) and 0.5 <= value <= 1, f"{prefix}.{name}", "must be within [0.5, 1]")
        for name in ("soc_initial_pct", "soc_min_pct"):
            value = getattr(self, name)
            _require(_finite(value) and 0 <= value <= 100, f"{prefix}.{name}", "must be within [0, 100]")
        if self.target_soc_pct is not None:
            _require(
                _finite(self.target_soc_pct) and 0 <= self.target_soc_pct <= 100,
                f"{prefix}.target_soc_pct",
                "must be within [0, 100]",
            )
        _require(self.arrival_step >= 0, f"{prefix}.arrival_step", "must be >= 0")
        if self.departure_step is not None:
            _require(self.departure_step >= self.arrival_step, f"{prefix}.departure_step", "must be >= arrival_step")

    @property
    def floor_kw(self) -> float:
        """The lowest power a running charger delivers: the rated power for an on/off charger."""
        return self.max_power_kw if self.kind is EvKind.ON_OFF else self.min_power_kw

    @property
    def max_discharge_kw(self) -> float:
        """V2G discharges up to the rated power, and only while above `soc_min_pct` (from the start:
        a car below it is only charged, and a re-plan once it is above may discharge it)."""
        if self.kind is not EvKind.V2G or self.soc_initial_pct < self.soc_min_pct:
            return 0.0
        return self.max_power_kw

    def plugged(self, steps: int) -> npt.NDArray[np.bool_]:
        """Per step of a horizon of `steps`, whether the car is plugged in."""
        index = np.arange(steps)
        departure = steps if self.departure_step is None else self.departure_step
        return (index >= self.arrival_step) & (index < departure)

    def target_step(self, steps: int) -> int | None:
        """The step at whose end the departure target holds (the last plugged step in the horizon, or the
        horizon's last); None without a target or when the car is not plugged in within the horizon."""
        if self.target_soc_pct is None:
            return None
        plugged = np.flatnonzero(self.plugged(steps))
        return int(plugged[-1]) if plugged.size else None


@dataclass(frozen=True)
class DemandCharge:
    """A billing-period charge on peak import: `price_per_kw` x (the period's peak - `period_peak_kw`).

    `period_peak_kw` is the peak already reached earlier in the same billing period: raising the peak only
    up to it costs nothing more. The horizon is taken to lie within one billing period.
    """

    price_per_kw: float
    period_peak_kw: float = 0.0

    def __post_init__(self) -> None:
        _require(_finite(self.price_per_kw) and self.price_per_kw >= 0, "demand_charge.price_per_kw", "must be >= 0")
        _require(
            _finite(self.period_peak_kw) and self.period_peak_kw >= 0, "demand_charge.period_peak_kw", "must be >= 0"
        )


@dataclass(frozen=True, eq=False)
class SiteProblem:
    """One site over N steps: prices, the non-controllable load and PV, grid limits, batteries."""

    start: datetime
    step_hours: float
    import_price: FloatArray
    export_price: FloatArray
    load_kw: FloatArray
    pv_kw: FloatArray
    batteries: tuple[Battery, ...] = ()
    vehicles: tuple[ElectricVehicle, ...] = ()
    import_limit_kw: FloatArray = field(default_factory=lambda: np.empty(0))  # empty: unlimited
    export_limit_kw: FloatArray = field(default_factory=lambda: np.empty(0))
    demand_charge: DemandCharge | None = None

    @classmethod
    def create(
        cls,
        *,
        start: datetime,
        step_hours: float,
        import_price: Sequence[float] | FloatArray,
        export_price: Sequence[float] | FloatArray,
        load_kw: Sequence[float] | FloatArray,
        pv_kw: Sequence[float] | FloatArray | None = None,
        batteries: Sequence[Battery] = (),
        vehicles: Sequence[ElectricVehicle] = (),
        import_limit_kw: float | Sequence[float] | FloatArray | None = None,
        export_limit_kw: float | Sequence[float] | FloatArray | None = None,
        demand_charge: DemandCharge | None = None,
    ) -> SiteProblem:
        """A problem from plain values: sequences become arrays, a scalar limit applies to every step, None
        means no limit (PV None means no PV)."""
        steps = len(load_kw)
        return cls(
            start=start,
            step_hours=step_hours,
            import_price=_array(import_price, "import_price"),
            export_price=_array(export_price, "export_price"),
            load_kw=_array(load_kw, "load_kw"),
            pv_kw=np.zeros(steps) if pv_kw is None else _array(pv_kw, "pv_kw"),
            batteries=tuple(batteries),
            vehicles=tuple(vehicles),
            import_limit_kw=_limit(import_limit_kw, steps, "import_limit_kw"),
            export_limit_kw=_limit(export_limit_kw, steps, "export_limit_kw"),
            demand_charge=demand_charge,
        )

    def __post_init__(self) -> None:
        _require(_finite(self.step_hours) and self.step_hours > 0, "step_hours", "must be > 0")
        steps = self.steps
        _require(steps >= 1, "load_kw", "needs at least one step")
        for name in ("import_price", "export_price", "load_kw", "pv_kw"):
            values = getattr(self, name)
            _require(values.shape == (steps,), name, f"needs {steps} values (one per step), got {values.shape}")
            _require(bool(np.all(np.isfinite(values))), name, "must be finite numbers")
        _require(bool(np.all(self.load_kw >= 0)), "load_kw", "must be >= 0")
        _require(bool(np.all(self.pv_kw >= 0)), "pv_kw", "must be >= 0")
        for name in ("import_limit_kw", "export_limit_kw"):
            values = getattr(self, name)
            if values.size == 0:
                object.__setattr__(self, name, np.full(steps, np.inf))
                continue
            _require(values.shape == (steps,), name, f"needs {steps} values (one per step), got {values.shape}")
            _require(bool(np.all(values >= 0)) and not bool(np.any(np.isnan(values))), name, "must be >= 0")
        names = [battery.name for battery in self.batteries] + [vehicle.name for vehicle in self.vehicles]
        _require(len(set(names)) == len(names), "batteries", "names must be unique (batteries and vehicles)")

    @property
    def steps(self) -> int:
        return int(self.load_kw.shape[0])


class PlanStatus(enum.StrEnum):
    """How a plan was reached; every status comes with a plan that respects every physical bound."""

    OPTIMAL = "optimal"
    TIME_LIMIT = "time_limit"  # the best plan found within the time limit (idle batteries if none was found)
    FAILED = "failed"  # the solver gave up (numerical trouble): the plan holds the batteries idle


class ViolatedLimit(enum.StrEnum):
    """A soft limit a plan may fail to meet; each is priced (see penalties in formulation.py)."""

    IMPORT_LIMIT = "import_limit"  # kW over the site's import limit
    EXPORT_LIMIT = "export_limit"  # kW over the site's export limit
    SOC_MIN = "soc_min"  # kWh below soc_min at the end of the step
    SOC_MAX = "soc_max"  # kWh above soc_max at the end of the step
    RESERVE = "reserve"  # kWh below the backup reserve (and not below soc_min) at the end of the step
    SOC_TARGET = "soc_target"  # kWh off the end-of-horizon target (last step)
    DEPARTURE_TARGET = "departure_target"  # kWh a car lacks at departure (its last plugged step)


@dataclass(frozen=True)
class Violation:
    """One soft limit missed at one step: by how much (`unit`) and what the plan pays for it."""

    limit: ViolatedLimit
    step: int
    amount: float
    unit: str
    penalty: float
    device: str | None = None  # the battery, or None for a site limit


@dataclass(frozen=True, eq=False)
class BatteryPlan:
    """One battery's schedule: AC power per step and the SoC path recomputed from it."""

    name: str
    charge_kw: FloatArray  # N
    discharge_kw: FloatArray  # N
    energy_kwh: FloatArray  # N + 1: [0] the initial energy, [t] at the end of step t - 1
    soc_pct: FloatArray  # N + 1, energy_kwh as a percentage of the capacity

    @property
    def power_kw(self) -> FloatArray:
        """The setpoint per step, positive into the battery (docs/design.md §5's sign)."""
        return self.charge_kw - self.discharge_kw


@dataclass(frozen=True, eq=False)
class VehiclePlan:
    """One car's schedule: AC power per step (positive charging, negative V2G) and its SoC path."""

    name: str
    kind: EvKind
    power_kw: FloatArray  # N
    energy_kwh: FloatArray  # N + 1, as BatteryPlan's
    soc_pct: FloatArray  # N + 1


@dataclass(frozen=True, eq=False)
class Plan:
    """The answer to a `SiteProblem`: schedules, grid flows, what they cost, and the limits they miss.

    `objective` = `energy_cost` + `demand_charge_cost` + `penalty_cost`, all recomputed from the schedule
    (not read back from the solver), so they hold for exactly the numbers returned.
    """

    status: PlanStatus
    solver_status: str  # HiGHS's own word for how the solve ended ("Optimal", "Time limit reached", ...)
    batteries: tuple[BatteryPlan, ...]
    grid_import_kw: FloatArray
    grid_export_kw: FloatArray
    energy_cost: float
    demand_charge_cost: float
    penalty_cost: float
    violations: tuple[Violation, ...]
    binaries: int  # how many integer variables the solve needed (0: a plain LP)
    iterations: int  # simplex iterations of the solve (a warm start needs few)
    build_s: float  # model built (or updated in place) from the problem's arrays
    solve_s: float  # HiGHS, then the plan read back and recomputed
    vehicles: tuple[VehiclePlan, ...] = ()
    relaxed: bool = False  # the MIP found nothing in time: the LP relaxation, rounded to a feasible schedule

    @property
    def objective(self) -> float:
        return self.energy_cost + self.demand_charge_cost + self.penalty_cost

    def battery(self, name: str) -> BatteryPlan:
        for plan in self.batteries:
            if plan.name == name:
                return plan
        raise KeyError(name)

    def vehicle(self, name: str) -> VehiclePlan:
        for plan in self.vehicles:
            if plan.name == name:
                return plan
        raise KeyError(name)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ProblemError(field, message)


def _array(values: Sequence[float] | FloatArray, name: str) -> FloatArray:
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ProblemError(name, "must be a list of numbers") from error


def _limit(values: float | Sequence[float] | FloatArray | None, steps: int, name: str) -> FloatArray:
    if values is None:
        return np.full(steps, np.inf)
    if isinstance(values, int | float):
        return np.full(steps, float(values))
    return _array(values, name)
