"""Solving site problems with HiGHS: `solve(problem)` once, or a `PlanSolver` that keeps a model per shape.

A `PlanSolver` builds the constraint matrix of a shape once (formulation.build_structure) and hands each
later problem of that shape to the same `Highs` object by changing costs, bounds and right-hand sides in
place, so HiGHS starts from the previous basis: an MPC tick or a fleet of identical batteries re-solves
without rebuilding anything. The plan it returns is recomputed from the battery powers the solver chose
(netted, so no battery charges and discharges in the same step), never read back from its slacks.

A solve never fails with "infeasible": the model is always feasible (formulation.py), a time limit
returns the best plan found so far (status time_limit), and if HiGHS finds none, or gives up, the plan holds
every battery idle, which respects every physical bound, with its violations reported like any other.

Cars (problem.ElectricVehicle) with a minimum current make the model a MIP. If it finds no integer plan
within the time limit, the same model is solved once more as its LP relaxation and each car's powers are
rounded to a schedule its charger can run (`round_vehicle_power`: 0 or between its minimum and rated
power, carrying the rounding error to the next step, never past 0..capacity); `Plan.relaxed` says so.
`evaluate` applies the same rounding to every plan, so no plan ever holds a power a charger cannot run.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import highspy
import numpy as np

from optimizer.formulation import (
    ModelData,
    ModelLayout,
    ModelShape,
    Penalties,
    build_structure,
    model_data,
    penalties_for,
    shape_of,
)
from optimizer.problem import (
    Battery,
    BatteryPlan,
    ElectricVehicle,
    FloatArray,
    Plan,
    PlanStatus,
    SiteProblem,
    TargetMode,
    VehiclePlan,
    ViolatedLimit,
    Violation,
)

__all__ = ["DEFAULT_TIME_LIMIT_S", "RELAXATION_MINIMUM_S", "PlanSolver", "evaluate", "round_vehicle_power", "solve"]

logger = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT_S = 5.0
# A MIP stops within this relative gap of the best bound: well inside the 1e-6 the scenario format allows.
DEFAULT_MIP_RELATIVE_GAP = 1e-7
# The LP relaxation, the fallback of a MIP that found nothing in time, gets at least this long (an LP of a
# day of steps takes milliseconds): a solve may overrun a tiny time limit by this much, and returns a plan.
RELAXATION_MINIMUM_S = 0.05
# Violations smaller than this (kW or kWh) are solver tolerance, not a limit missed.
VIOLATION_TOLERANCE = 1e-6
# Powers below this (kW) are rounding left by the solver and read as zero.
_POWER_NOISE_KW = 1e-9
# Charge still owed at the end of a car's window above this (kW) is placed in its steps (round_vehicle_power).
_ROUNDING_OWED_KW = 1e-3
# A car's power this close below its charger's floor is the floor (MIP tolerance), not a step to round.
_FLOOR_TOLERANCE_KW = 1e-6

_FEASIBLE = 2  # HiGHS kSolutionStatusFeasible
_TIME_LIMIT_STATUSES = {
    highspy.HighsModelStatus.kTimeLimit,
    highspy.HighsModelStatus.kIterationLimit,
    highspy.HighsModelStatus.kInterrupt,
    highspy.HighsModelStatus.kSolutionLimit,
}
_SETTLED_STATUSES = {highspy.HighsModelStatus.kOptimal, *_TIME_LIMIT_STATUSES}
_NO_PLAN_STATUSES = {
    highspy.HighsModelStatus.kInfeasible,
    highspy.HighsModelStatus.kUnbounded,
    highspy.HighsModelStatus.kUnboundedOrInfeasible,
}


@dataclass
class _Model:
    highs: highspy.Highs
    layout: ModelLayout
    lp: highspy.HighsLp  # the structure, passed with the first problem's data


class PlanSolver:
    """Solves site problems, keeping one HiGHS model per `ModelShape` (the `max_models` used last).

    Not thread-safe: give each worker its own. Models of shapes with binaries run HiGHS's MIP solver with
    presolve; plain LPs skip presolve, which costs more than it saves on models this small (and would
    discard the warm basis).
    """

    def __init__(
        self,
        *,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        mip_relative_gap: float = DEFAULT_MIP_RELATIVE_GAP,
        max_models: int = 16,
    ) -> None:
        if time_limit_s <= 0:
            raise ValueError("time_limit_s must be > 0")
        self._time_limit_s = time_limit_s
        self._mip_relative_gap = mip_relative_gap
        self._max_models = max_models
        self._models: OrderedDict[ModelShape, _Model] = OrderedDict()

    @property
    def model_count(self) -> int:
        return len(self._models)

    def solve(self, problem: SiteProblem, *, time_limit_s: float | None = None) -> Plan:
        """The best plan for `problem` found within the time limit (the solver's own unless given)."""
        started = time.perf_counter()
        limit_s = self._time_limit_s if time_limit_s is None else time_limit_s
        if limit_s <= 0:
            raise ValueError("time_limit_s must be > 0")
        penalties = penalties_for(problem)
        shape = shape_of(problem)
        model = self._models.get(shape)
        if model is None:
            model = self._build(shape)
            data = model_data(problem, model.layout, penalties)
            _pass_model(model, data)
        else:
            self._models.move_to_end(shape)
            data = model_data(problem, model.layout, penalties)
            _update_model(model, data)
        highs = model.highs
        # HiGHS compares time_limit with the run time accumulated over every run of the object (until HiGHS
        # 2.0, ERGO-Code/HiGHS#1477): a kept model would otherwise hit it on every tick after a while.
        highs.setOptionValue("time_limit", highs.getRunTime() + limit_s)
        built = time.perf_counter()
        highs.run()
        model_status = highs.getModelStatus()
        if model_status not in _SETTLED_STATUSES:
            # A warm start can end in numerical doubt ("Unknown": about 1 in 1,000 fleet re-plans in
            # bench/optimizer.py) where a cold start does not: drop the basis and solve once more.
            logger.info("re-solving without the warm basis after %s", highs.modelStatusToString(model_status))
            highs.clearSolver()
            highs.setOptionValue("time_limit", highs.getRunTime() + limit_s)
            highs.run()
            model_status = highs.getModelStatus()
        if model_status == highspy.HighsModelStatus.kOptimal:
            status = PlanStatus.OPTIMAL
        elif model_status in _NO_PLAN_STATUSES:
            # Impossible by construction (formulation.py); if numerical trouble ever claims it, the caller
            # still gets a safe plan, and the log says which problem to reproduce.
            logger.error("HiGHS reported %s on an always-feasible model", highs.modelStatusToString(model_status))
            status = PlanStatus.FAILED
        elif model_status in _TIME_LIMIT_STATUSES:
            status = PlanStatus.TIME_LIMIT
        else:
            status = PlanStatus.FAILED
        info = highs.getInfo()
        has_solution = status is PlanStatus.OPTIMAL or (
            status is PlanStatus.TIME_LIMIT and info.primal_solution_status == _FEASIBLE
        )
        relaxed = False
        iterations = int(info.simplex_iteration_count)
        if not has_solution and shape.integers:
            # No integer plan in time: the LP relaxation, whose car powers evaluate rounds to runnable ones
            # (the next solve of this shape sets the integrality again, _update_binaries).
            binaries = model.layout.binary_columns
            highs.changeColsIntegrality(binaries.size, binaries, np.zeros(binaries.size, dtype=np.uint8))
            highs.setOptionValue("time_limit", highs.getRunTime() + max(limit_s, RELAXATION_MINIMUM_S))
            highs.run()
            relaxed_status = highs.getModelStatus()
            info = highs.getInfo()
            has_solution = relaxed_status == highspy.HighsModelStatus.kOptimal or (
                relaxed_status in _TIME_LIMIT_STATUSES and info.primal_solution_status == _FEASIBLE
            )
            relaxed = has_solution
            iterations += int(info.simplex_iteration_count)
            if status is PlanStatus.OPTIMAL:
                status = PlanStatus.TIME_LIMIT
        steps, batteries = problem.steps, len(problem.batteries)
        charge = np.zeros((batteries, steps))
        discharge = np.zeros((batteries, steps))
        vehicle_kw = np.zeros((len(problem.vehicles), steps))
        if has_solution:
            values = np.asarray(highs.getSolution().col_value)
            for b in range(batteries):
                charge[b] = values[model.layout.charge[b]]
                discharge[b] = values[model.layout.discharge[b]]
            for k in range(len(problem.vehicles)):
                vehicle_kw[k] = values[model.layout.vehicle_charge[k]] - values[model.layout.vehicle_discharge[k]]
        plan = evaluate(
            problem,
            charge,
            discharge,
            status=status,
            solver_status=highs.modelStatusToString(model_status),
            penalties=penalties,
            binaries=int(data.integrality.sum()),
            iterations=iterations,
            build_s=built - started,
            solve_s=0.0,
            vehicle_kw=vehicle_kw,
        )
        return replace(plan, solve_s=time.perf_counter() - built, relaxed=relaxed)

    def _build(self, shape: ModelShape) -> _Model:
        structure = build_structure(shape)
        highs = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy leaves __init__ unannotated
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("presolve", "on" if shape.integers else "off")
        highs.setOptionValue("mip_rel_gap", self._mip_relative_gap)
        layout = structure.layout
        lp = highspy.HighsLp()
        lp.num_col_ = layout.column_count
        lp.num_row_ = layout.row_count
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.num_col_ = layout.column_count
        lp.a_matrix_.num_row_ = layout.row_count
        lp.a_matrix_.start_ = structure.start
        lp.a_matrix_.index_ = structure.index
        lp.a_matrix_.value_ = structure.value
        lp.col_cost_ = np.zeros(layout.column_count)
        lp.col_lower_ = np.zeros(layout.column_count)
        lp.col_upper_ = np.zeros(layout.column_count)
        lp.row_lower_ = np.zeros(layout.row_count)
        lp.row_upper_ = np.zeros(layout.row_count)
        model = _Model(highs=highs, layout=layout, lp=lp)
        self._models[shape] = model
        if len(self._models) > self._max_models:
            self._models.popitem(last=False)
        return model


def _pass_model(model: _Model, data: ModelData) -> None:
    """First problem of a shape: the whole model in one call, data included."""
    lp = model.lp
    lp.col_cost_ = data.cost
    lp.col_lower_ = data.column_lower
    lp.col_upper_ = data.column_upper
    lp.row_lower_ = data.row_lower
    lp.row_upper_ = data.row_upper
    lp.offset_ = data.offset
    model.highs.passModel(lp)
    _update_binaries(model, data)


def _update_model(model: _Model, data: ModelData) -> None:
    """A later problem of the same shape: only costs, bounds, right-hand sides (and big-M values) change."""
    highs = model.highs
    layout = model.layout
    columns = np.arange(layout.column_count, dtype=np.int32)
    rows = np.arange(layout.row_count, dtype=np.int32)
    highs.changeColsCost(layout.column_count, columns, data.cost)
    highs.changeColsBounds(layout.column_count, columns, data.column_lower, data.column_upper)
    # highspy's stubs (1.15) miss changeRowsBounds, which its extension module does have.
    highs.changeRowsBounds(layout.row_count, rows, data.row_lower, data.row_upper)  # type: ignore[attr-defined]
    highs.changeObjectiveOffset(data.offset)
    _update_binaries(model, data)


def _update_binaries(model: _Model, data: ModelData) -> None:
    if data.integrality.size == 0:
        return
    highs = model.highs
    for row, column, value in zip(
        data.coefficient_rows.tolist(), data.coefficient_columns.tolist(), data.coefficient_values.tolist(), strict=True
    ):
        highs.changeCoeff(row, column, value)
    binaries = model.layout.binary_columns
    highs.changeColsIntegrality(binaries.size, binaries, data.integrality)


def evaluate(
    problem: SiteProblem,
    charge_kw: FloatArray,
    discharge_kw: FloatArray,
    *,
    status: PlanStatus,
    solver_status: str = "",
    penalties: Penalties | None = None,
    binaries: int = 0,
    iterations: int = 0,
    build_s: float = 0.0,
    solve_s: float = 0.0,
    vehicle_kw: FloatArray | None = None,
) -> Plan:
    """The plan that runs each battery at these powers (one row per battery): clipped to the power limits,
    netted where a battery would charge and discharge at once, its SoC path, grid flows, costs and the soft
    limits it misses, all recomputed from the powers. Each car's power (one row per car in `vehicle_kw`,
    positive charging; None: idle) is rounded to what its charger can run (`round_vehicle_power`)."""
    penalties = penalties or penalties_for(problem)
    dt = problem.step_hours
    batteries: list[BatteryPlan] = []
    violations: list[Violation] = []
    penalty_cost = 0.0
    battery_flow = np.zeros(problem.steps)
    for b, battery in enumerate(problem.batteries):
        charge = np.clip(np.asarray(charge_kw[b], dtype=np.float64), 0.0, battery.max_charge_kw)
        discharge = np.clip(np.asarray(discharge_kw[b], dtype=np.float64), 0.0, battery.max_discharge_kw)
        charge[charge < _POWER_NOISE_KW] = 0.0
        discharge[discharge < _POWER_NOISE_KW] = 0.0
        eta_charge, eta_discharge = battery.charge_efficiency, battery.discharge_efficiency
        both = (charge > 0) & (discharge > 0)
        if both.any():
            # Keep the stored energy of the step, drop the round trip through the battery.
            stored = eta_charge * charge[both] - discharge[both] / eta_discharge
            charge[both] = np.maximum(stored, 0.0) / eta_charge
            discharge[both] = np.maximum(-stored, 0.0) * eta_discharge
        energy = np.empty(problem.steps + 1)
        energy[0] = battery.capacity_kwh * battery.soc_initial_pct / 100
        energy[1:] = energy[0] + np.cumsum(eta_charge * charge * dt - discharge * dt / eta_discharge)
        batteries.append(
            BatteryPlan(
                name=battery.name,
                charge_kw=charge,
                discharge_kw=discharge,
                energy_kwh=energy,
                soc_pct=energy * (100 / battery.capacity_kwh),
            )
        )
        battery_flow += charge - discharge
        penalty_cost += _battery_violations(battery, energy[1:], penalties, violations)
    vehicles: list[VehiclePlan] = []
    for k, vehicle in enumerate(problem.vehicles):
        wanted = np.zeros(problem.steps) if vehicle_kw is None else np.asarray(vehicle_kw[k], dtype=np.float64)
        power, energy = round_vehicle_power(vehicle, wanted, dt)
        vehicles.append(
            VehiclePlan(
                name=vehicle.name,
                kind=vehicle.kind,
                power_kw=power,
                energy_kwh=energy,
                soc_pct=energy * (100 / vehicle.capacity_kwh),
            )
        )
        battery_flow += power
        penalty_cost += _vehicle_violations(vehicle, energy, penalties, violations)
    net = problem.load_kw - problem.pv_kw + battery_flow
    grid_import = np.maximum(net, 0.0)
    grid_export = np.maximum(-net, 0.0)
    energy_cost = float(np.sum(grid_import * problem.import_price - grid_export * problem.export_price) * dt)
    demand_cost = 0.0
    if problem.demand_charge is not None:
        peak = float(np.max(grid_import))
        demand_cost = problem.demand_charge.price_per_kw * max(0.0, peak - problem.demand_charge.period_peak_kw)
    for limit, flow, bound in (
        (ViolatedLimit.IMPORT_LIMIT, grid_import, problem.import_limit_kw),
        (ViolatedLimit.EXPORT_LIMIT, grid_export, problem.export_limit_kw),
    ):
        over = np.maximum(flow - bound, 0.0)
        penalty_cost += _collect(limit, None, over, penalties.site_limit * dt, "kW", violations)
    violations.sort(key=lambda violation: (violation.step, violation.limit, violation.device or ""))
    return Plan(
        status=status,
        solver_status=solver_status,
        batteries=tuple(batteries),
        grid_import_kw=grid_import,
        grid_export_kw=grid_export,
        energy_cost=energy_cost,
        demand_charge_cost=demand_cost,
        penalty_cost=penalty_cost,
        violations=tuple(violations),
        binaries=binaries,
        iterations=iterations,
        build_s=build_s,
        solve_s=solve_s,
        vehicles=tuple(vehicles),
    )


def round_vehicle_power(vehicle: ElectricVehicle, power_kw: FloatArray, dt: float) -> tuple[FloatArray, FloatArray]:
    """A schedule the car's charger can run, as close to `power_kw` as that allows, and its energy path (N + 1).

    Step by step: 0 outside the plug-in window; else the wanted power plus what earlier steps' rounding left
    over, run as is when at least the charger's floor (its minimum power; the rated power on/off), raised to
    the floor from half of it, 0 below; at most the rated power (discharge: V2G's limit); never past the
    capacity, nor (discharging) below the minimum SoC. Charge still owed at the end of the window is then
    added where the charger runs below its rating, else at the floor in the idle steps the wanted powers
    favour, so the energy meant for the departure is not lost. A MIP optimum passes unchanged (up to solver
    noise); an LP relaxation becomes a runnable schedule delivering about the same energy."""
    wanted = np.asarray(power_kw, dtype=np.float64)
    power, energy, owed = _round_forward(vehicle, wanted, dt)
    if owed <= _ROUNDING_OWED_KW:
        return power, energy
    plugged = vehicle.plugged(wanted.shape[0])
    limit = vehicle.max_power_kw
    adjusted = power.copy()
    running = np.flatnonzero(plugged & (adjusted > 0) & (adjusted < limit))
    idle = np.flatnonzero(plugged & (adjusted == 0))
    for step in [*running.tolist(), *sorted(idle.tolist(), key=lambda index: -float(wanted[index]))]:
        if owed <= _ROUNDING_OWED_KW:
            break
        added = min(owed, limit - adjusted[step]) if adjusted[step] > 0 else min(max(owed, vehicle.floor_kw), limit)
        adjusted[step] += added
        owed -= added
    power, energy, _ = _round_forward(vehicle, adjusted, dt)
    return power, energy


def _round_forward(vehicle: ElectricVehicle, wanted_kw: FloatArray, dt: float) -> tuple[FloatArray, FloatArray, float]:
    """The forward pass of `round_vehicle_power`: (powers, energy path, charge in kW still owed at the end
    of the window, positive)."""
    steps = wanted_kw.shape[0]
    plugged = vehicle.plugged(steps)
    floor = vehicle.floor_kw
    eta_charge, eta_discharge = vehicle.charge_efficiency, vehicle.discharge_efficiency
    capacity = vehicle.capacity_kwh
    energy = np.empty(steps + 1)
    energy[0] = capacity * vehicle.soc_initial_pct / 100
    lowest = capacity * vehicle.soc_min_pct / 100
    power = np.zeros(steps)
    carry = 0.0
    for step in range(steps):
        current = float(energy[step])
        if not plugged[step]:
            energy[step + 1] = current
            continue
        wanted = float(wanted_kw[step]) + carry
        charging = wanted >= 0
        limit = vehicle.max_power_kw if charging else vehicle.max_discharge_kw
        if charging:
            room = max(0.0, (capacity - current) / (eta_charge * dt))
        else:
            room = max(0.0, (current - lowest) * eta_discharge / dt)
        magnitude = min(abs(wanted), limit, room)
        if magnitude < floor - _FLOOR_TOLERANCE_KW:
            # Below the floor: run at the floor if the wanted power is at least half of it and the car
            # can take (give) it, else not at all.
            magnitude = floor if abs(wanted) >= floor / 2 and min(limit, room) >= floor - _FLOOR_TOLERANCE_KW else 0.0
        if magnitude < _POWER_NOISE_KW:
            magnitude = 0.0
        value = magnitude if charging else -magnitude
        power[step] = value
        carry = wanted - value
        stored = eta_charge * value * dt if value >= 0 else value * dt / eta_discharge
        energy[step + 1] = current + stored
    return power, energy, max(carry, 0.0)


def _vehicle_violations(
    vehicle: ElectricVehicle, energy: FloatArray, penalties: Penalties, violations: list[Violation]
) -> float:
    """Adds a car's shortfall at departure; returns its penalty."""
    step = vehicle.target_step(energy.shape[0] - 1)
    if step is None or vehicle.target_soc_pct is None:
        return 0.0
    shortfall = np.zeros(energy.shape[0] - 1)
    shortfall[step] = max(0.0, vehicle.capacity_kwh * vehicle.target_soc_pct / 100 - float(energy[step + 1]))
    return _collect(ViolatedLimit.DEPARTURE_TARGET, vehicle.name, shortfall, penalties.target, "kWh", violations)


def _battery_violations(
    battery: Battery, energy: FloatArray, penalties: Penalties, violations: list[Violation]
) -> float:
    """Adds the SoC violations of one battery's energy path (end of each step); returns their penalty."""
    capacity = battery.capacity_kwh
    floor = capacity * battery.soc_min_pct / 100
    reserve = capacity * battery.reserve_floor_pct / 100
    ceiling = capacity * battery.soc_max_pct / 100
    below_min = np.maximum(floor - energy, 0.0)
    below_reserve = np.minimum(np.maximum(reserve - energy, 0.0), reserve - floor)
    above_max = np.maximum(energy - ceiling, 0.0)
    cost = _collect(ViolatedLimit.SOC_MIN, battery.name, below_min, penalties.soc_bounds, "kWh", violations)
    cost += _collect(ViolatedLimit.RESERVE, battery.name, below_reserve, penalties.reserve, "kWh", violations)
    cost += _collect(ViolatedLimit.SOC_MAX, battery.name, above_max, penalties.soc_bounds, "kWh", violations)
    if battery.soc_target_pct is not None:
        target = capacity * battery.soc_target_pct / 100
        miss = target - float(energy[-1])
        if battery.target_mode is TargetMode.AT_LEAST:
            miss = max(miss, 0.0)
        off = np.zeros(energy.shape[0])
        off[-1] = abs(miss)
        cost += _collect(ViolatedLimit.SOC_TARGET, battery.name, off, penalties.target, "kWh", violations)
    return cost


def _collect(
    limit: ViolatedLimit,
    device: str | None,
    amounts: FloatArray,
    price: float,
    unit: str,
    violations: list[Violation],
) -> float:
    """Adds a violation for each step whose amount exceeds the tolerance; returns their total penalty."""
    steps = np.flatnonzero(amounts > VIOLATION_TOLERANCE)
    total = 0.0
    for step in steps.tolist():
        amount = float(amounts[step])
        penalty = amount * price
        total += penalty
        violations.append(Violation(limit=limit, step=step, amount=amount, unit=unit, penalty=penalty, device=device))
    return total


def solve(
    problem: SiteProblem,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    mip_relative_gap: float = DEFAULT_MIP_RELATIVE_GAP,
) -> Plan:
    """The best plan for one problem, its model built from scratch (a `PlanSolver` reuses models)."""
    return PlanSolver(time_limit_s=time_limit_s, mip_relative_gap=mip_relative_gap).solve(problem)
