"""The site problem as a HiGHS model, built from numpy arrays: structure once per shape, data per solve.

Columns, per battery b and step t (N steps of dt hours):

    ch[t], dis[t]     AC charge / discharge power, kW, hard [0, max_charge_kw] / [0, max_discharge_kw]
    e[t]              energy at the end of step t, kWh, hard [0, capacity]
    s_res[t]          kWh below the backup reserve, at most reserve - soc_min          (penalty RESERVE)
    s_low[t], s_high[t]  kWh below soc_min / above soc_max                             (penalty SOC_BOUNDS)
    under, over       kWh below / above the end-of-horizon target                      (penalty TARGET)
    u[t]              1 = may charge, 0 = may discharge (only in the shape with binaries)

and for the site:

    imp[t], imp_over[t]  import within the limit, kW, hard [0, min(limit, physical)]; import above it (SITE)
    exp[t], exp_over[t]  the same for export
    v[t]              1 = may import, 0 = may export (only with binaries)
    peak              the billing period's peak import, kW, >= the peak reached so far (only with a demand charge)

Rows:

    energy     e[t] - e[t-1] - eta_c*dt*ch[t] + dt/eta_d*dis[t] = 0      (e[-1] is the initial energy, on the rhs)
    soc        e[t] + s_res[t] + s_low[t] - s_high[t] in [C*max(reserve, soc_min), C*soc_max]
    target     e[N-1] + under - over  = target (exact) or >= target (at least); free without a target
    balance    imp + imp_over - exp - exp_over - sum_b ch_b + sum_b dis_b = load - pv
    demand     imp + imp_over - peak <= 0
    charge     ch[t] - max_charge_kw*u[t] <= 0,  dis[t] + max_discharge_kw*u[t] <= max_discharge_kw
    grid       imp + imp_over - M_imp[t]*v[t] <= 0,  exp + exp_over + M_exp[t]*v[t] <= M_exp[t]

A battery that starts inside its band [max(reserve, soc_min), soc_max] has the band as hard bounds on e
instead of the soc row and its slacks (soc_band_is_kept: the soft optimum keeps such a band anyway).
One `soc` row carries three prices: s_res is cheaper than s_low and bounded by reserve - soc_min, so the plan
dips below the reserve before it dips below soc_min, and below soc_min only when nothing else is possible.

Cost: sum_t dt*(p_imp*imp - p_exp*exp) + dt*(p_imp + SITE)*imp_over + dt*(SITE - p_exp)*exp_over
      + demand*(peak - peak so far) + RESERVE*s_res + SOC_BOUNDS*(s_low + s_high) + TARGET*(under + over).

Every limit a plan may be unable to meet is a priced slack, and every hard bound is physics that doing
nothing satisfies (batteries idle, the grid takes the net load), so the model is always feasible; every
unbounded column has a positive cost, and imports and exports are capped at what the site can physically
draw or feed in, so it is never unbounded either.

Penalties (currency per kWh of violation; a SoC violation counts per step it lasts) are tiers of a price
scale S = max(|import prices|, |export prices|, demand price / dt, 0.01):

    TARGET 1e2*S < SITE 1e3*S < RESERVE 1e4*S < SOC_BOUNDS 1e5*S

Why these gaps. Missing the target by a stored kWh gains at most one kWh's price after losses (at most
S/eta_c <= 10*S for efficiencies of at least 0.1, demand charges included in S), far below TARGET. Meeting
the target by importing over the site limit costs SITE per grid kWh and brings at most one stored kWh: SITE >
TARGET keeps the limit. Keeping the import limit by discharging below the reserve costs RESERVE per stored
kWh for at least one step, each grid kWh needing 1/eta_d >= 1 stored kWh: RESERVE > SITE keeps the reserve;
likewise SOC_BOUNDS > RESERVE. So no price makes a plan miss a limit it could keep, and when limits conflict
the device's own bounds win over its reserve, the reserve over the site's grid limits, and those over the
end-of-horizon target: the precedence of docs/design.md (the device's limits and reserve clamp everything; the
site cap next). Scaling by the problem's own prices, rather than a fixed number, keeps the model's cost range
near 1e5-1e7, where HiGHS's absolute tolerances (1e-7) stay meaningful, and works in any currency.

Electric vehicles, per car k (formulation of docs/decisions/2026-12-08-ev-formulation.md):

    ev_ch[t], ev_dis[t]   AC charge / discharge power, kW, hard [0, rated] while plugged in, 0 otherwise
                          (ev_dis only for V2G, and only when the car starts at or above its minimum SoC)
    ev_e[t]               energy at the end of step t, kWh, hard [V2G: min(initial, C*soc_min); else 0, C]
    ev_short              kWh the car lacks at departure                                 (penalty TARGET)
    ev_on[t], ev_back[t]  1 = may charge / may discharge (only for a semi-continuous or V2G car)

    ev_energy  ev_e[t] - ev_e[t-1] - eta_c*dt*ev_ch[t] + dt/eta_d*ev_dis[t] = 0
    ev_target  ev_e[t] + ev_short >= target at the departure step, free at every other step (one row per step,
               so a departure that moves as the horizon recedes changes only row bounds, not the matrix)
    ev_on      ev_ch - rated*ev_on <= 0,  ev_ch - floor*ev_on >= 0   (floor: the minimum current's power;
               the rated power for an on/off charger, so it runs at exactly 0 or rated)
    ev_back    the same for ev_dis and ev_back, and ev_on + ev_back <= 1
    balance    ... - sum_k ev_ch + sum_k ev_dis

The departure target is priced at the TARGET tier, like a battery's end-of-horizon target: missing a kWh
saves at most S/eta_c <= 2*S (eta_c >= 0.5), so it is met whenever the car can take the energy, and the
site's limits and the batteries' bounds and reserves still win over it. A car's binaries are integer only
while it is plugged in; outside its window its columns are fixed at 0.

Binaries: a battery charging and discharging in the same step, or a site importing and exporting, can only
pay where energy has a negative value. At step t, if p_imp[t] >= 0, the export price is >= 0 or the site
cannot export then, and the export limit cannot bind (pv - load + sum max_discharge <= export limit),
turning any simultaneous (ch, dis) into its net (same stored energy, so the same SoC path) frees
(1 - eta_c*eta_d)*dis*dt of energy that lowers the import or raises the export without reaching a limit:
never dearer. Likewise netting import against export saves (p_imp - p_exp) >= 0 where p_exp <= p_imp.
So the plan is recomputed from the net battery powers, and integer u[t] (v[t]) are needed only at the
steps where that condition fails. Without such a step the model is a plain LP and its optimum, netted,
is the optimum of the problem with the exclusivity rule. The shape with binaries keeps u and v at every
step (continuous where no integrality is needed: the row pair then only cuts simultaneous solutions, which
the netting removes anyway), so the steps that need integrality can change between solves in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from optimizer.problem import Battery, ElectricVehicle, EvKind, FloatArray, SiteProblem, TargetMode

__all__ = [
    "ModelData",
    "ModelLayout",
    "ModelShape",
    "ModelStructure",
    "Penalties",
    "build_structure",
    "exclusivity_steps",
    "model_data",
    "penalties_for",
    "shape_of",
    "soc_band_is_kept",
    "vehicle_needs_binaries",
]

IndexArray = npt.NDArray[np.int32]

# Tiers of the price scale; see the module docstring for why each is where it is.
TARGET_TIER = 1e2
SITE_LIMIT_TIER = 1e3
RESERVE_TIER = 1e4
SOC_BOUNDS_TIER = 1e5
MINIMUM_PRICE_SCALE = 0.01
# A step where simultaneous flows might pay is one where this much more export than the limit is possible.
_LIMIT_MARGIN_KW = 1e-9


@dataclass(frozen=True)
class Penalties:
    """Currency per kWh of violation (per step it lasts, for SoC limits)."""

    target: float
    site_limit: float
    reserve: float
    soc_bounds: float


def penalties_for(problem: SiteProblem) -> Penalties:
    """The penalties for this problem's prices (module docstring: tiers of a price scale)."""
    demand = problem.demand_charge.price_per_kw / problem.step_hours if problem.demand_charge else 0.0
    scale = max(
        float(np.max(np.abs(problem.import_price))),
        float(np.max(np.abs(problem.export_price))),
        demand,
        MINIMUM_PRICE_SCALE,
    )
    return Penalties(
        target=TARGET_TIER * scale,
        site_limit=SITE_LIMIT_TIER * scale,
        reserve=RESERVE_TIER * scale,
        soc_bounds=SOC_BOUNDS_TIER * scale,
    )


@dataclass(frozen=True)
class ModelShape:
    """What fixes the constraint matrix: a model built for one shape serves every problem of that shape."""

    steps: int
    step_hours: float
    efficiencies: tuple[tuple[float, float], ...]  # (charge, discharge) per battery: matrix coefficients
    soft_soc: tuple[bool, ...]  # per battery: whether its SoC band needs slacks (see soc_band_is_kept)
    demand_charge: bool
    binaries: bool
    # Per car: (kind, charge efficiency, discharge efficiency, whether it needs on/back binaries).
    vehicles: tuple[tuple[str, float, float, bool], ...] = ()

    @property
    def battery_count(self) -> int:
        return len(self.efficiencies)

    @property
    def integers(self) -> bool:
        """Whether a solve of this shape can be a MIP (battery/grid binaries or a car's)."""
        return self.binaries or any(semi for _, _, _, semi in self.vehicles)


def exclusivity_steps(problem: SiteProblem) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The steps where a battery charging and discharging at once, and where importing and exporting at
    once, might pay (module docstring); elsewhere netting the LP's flows is never dearer."""
    max_discharge = sum(battery.max_discharge_kw for battery in problem.batteries)
    max_discharge += sum(vehicle.max_discharge_kw for vehicle in problem.vehicles)
    can_export = problem.pv_kw - problem.load_kw + max_discharge
    battery_steps = (
        (problem.import_price < 0)
        | ((problem.export_price < 0) & (can_export > 0))
        | (can_export > problem.export_limit_kw + _LIMIT_MARGIN_KW)
    )
    if not problem.batteries:
        battery_steps = np.zeros(problem.steps, dtype=np.bool_)
    grid_steps = problem.export_price > problem.import_price
    return battery_steps, grid_steps


def soc_band_is_kept(battery: Battery) -> bool:
    """Whether the battery starts inside [max(reserve, soc_min), soc_max]. Then staying idle keeps the band,
    and since breaking it is dearer than anything it could buy or any limit below it in precedence, the
    optimum of the soft model keeps it too: the band can be hard column bounds on the energy, without the
    SoC row and its three slacks (a third fewer rows and columns, the simplex's work per MPC tick)."""
    return battery.reserve_floor_pct <= battery.soc_initial_pct <= battery.soc_max_pct


def shape_of(problem: SiteProblem) -> ModelShape:
    battery_steps, grid_steps = exclusivity_steps(problem)
    return ModelShape(
        steps=problem.steps,
        step_hours=problem.step_hours,
        efficiencies=tuple((b.charge_efficiency, b.discharge_efficiency) for b in problem.batteries),
        soft_soc=tuple(not soc_band_is_kept(b) for b in problem.batteries),
        demand_charge=problem.demand_charge is not None,
        binaries=bool(battery_steps.any() or grid_steps.any()),
        vehicles=tuple(
            (
                vehicle.kind.value,
                vehicle.charge_efficiency,
                vehicle.discharge_efficiency,
                vehicle_needs_binaries(vehicle),
            )
            for vehicle in problem.vehicles
        ),
    )


def vehicle_needs_binaries(vehicle: ElectricVehicle) -> bool:
    """A charger with a minimum power (on/off: the rated power) is semi-continuous; V2G also needs them so it
    never charges and discharges in one step. A V1G charger without a minimum current is a plain LP."""
    return vehicle.kind is EvKind.V2G or vehicle.floor_kw > 0


class ModelLayout:
    """Where each variable and row of a shape sits (index arrays into the column and row vectors)."""

    def __init__(self, shape: ModelShape) -> None:
        steps = shape.steps
        self.shape = shape
        column = 0
        row = 0

        def columns(count: int) -> IndexArray:
            nonlocal column
            indices = np.arange(column, column + count, dtype=np.int32)
            column += count
            return indices

        def rows(count: int) -> IndexArray:
            nonlocal row
            indices = np.arange(row, row + count, dtype=np.int32)
            row += count
            return indices

        empty = np.empty(0, dtype=np.int32)
        self.charge: list[IndexArray] = []
        self.discharge: list[IndexArray] = []
        self.energy: list[IndexArray] = []
        self.reserve_slack: list[IndexArray] = []
        self.low_slack: list[IndexArray] = []
        self.high_slack: list[IndexArray] = []
        self.target_under: list[int] = []
        self.target_over: list[int] = []
        self.mode: list[IndexArray] = []  # u
        self.energy_rows: list[IndexArray] = []
        self.soc_rows: list[IndexArray] = []
        self.target_rows: list[int] = []
        self.charge_rows: list[IndexArray] = []
        self.discharge_rows: list[IndexArray] = []
        for soft in shape.soft_soc:
            self.charge.append(columns(steps))
            self.discharge.append(columns(steps))
            self.energy.append(columns(steps))
            self.reserve_slack.append(columns(steps) if soft else empty)
            self.low_slack.append(columns(steps) if soft else empty)
            self.high_slack.append(columns(steps) if soft else empty)
            self.target_under.append(int(columns(1)[0]))
            self.target_over.append(int(columns(1)[0]))
            self.mode.append(columns(steps) if shape.binaries else empty)
            self.energy_rows.append(rows(steps))
            self.soc_rows.append(rows(steps) if soft else empty)
            self.target_rows.append(int(rows(1)[0]))
            self.charge_rows.append(rows(steps) if shape.binaries else empty)
            self.discharge_rows.append(rows(steps) if shape.binaries else empty)
        self.vehicle_charge: list[IndexArray] = []
        self.vehicle_discharge: list[IndexArray] = []
        self.vehicle_energy: list[IndexArray] = []
        self.vehicle_short: list[int] = []
        self.vehicle_on: list[IndexArray] = []
        self.vehicle_back: list[IndexArray] = []
        self.vehicle_energy_rows: list[IndexArray] = []
        self.vehicle_target_rows: list[IndexArray] = []
        self.vehicle_on_upper_rows: list[IndexArray] = []
        self.vehicle_on_lower_rows: list[IndexArray] = []
        self.vehicle_back_upper_rows: list[IndexArray] = []
        self.vehicle_back_lower_rows: list[IndexArray] = []
        self.vehicle_exclusive_rows: list[IndexArray] = []
        for _, _, _, semi in shape.vehicles:
            self.vehicle_charge.append(columns(steps))
            self.vehicle_discharge.append(columns(steps))
            self.vehicle_energy.append(columns(steps))
            self.vehicle_short.append(int(columns(1)[0]))
            self.vehicle_on.append(columns(steps) if semi else empty)
            self.vehicle_back.append(columns(steps) if semi else empty)
            self.vehicle_energy_rows.append(rows(steps))
            self.vehicle_target_rows.append(rows(steps))
            self.vehicle_on_upper_rows.append(rows(steps) if semi else empty)
            self.vehicle_on_lower_rows.append(rows(steps) if semi else empty)
            self.vehicle_back_upper_rows.append(rows(steps) if semi else empty)
            self.vehicle_back_lower_rows.append(rows(steps) if semi else empty)
            self.vehicle_exclusive_rows.append(rows(steps) if semi else empty)
        self.grid_import = columns(steps)
        self.import_over = columns(steps)
        self.grid_export = columns(steps)
        self.export_over = columns(steps)
        self.direction = columns(steps) if shape.binaries else empty  # v
        self.peak = int(columns(1)[0]) if shape.demand_charge else -1
        self.balance_rows = rows(steps)
        self.demand_rows = rows(steps) if shape.demand_charge else empty
        self.import_rows = rows(steps) if shape.binaries else empty
        self.export_rows = rows(steps) if shape.binaries else empty
        self.column_count = column
        self.row_count = row
        battery_binaries = [*self.mode, self.direction] if shape.binaries else []
        # Per car: on then back, the order model_data lists their integrality in.
        vehicle_binaries = [mode for pair in zip(self.vehicle_on, self.vehicle_back, strict=True) for mode in pair]
        self.binary_columns = np.concatenate([*battery_binaries, *vehicle_binaries, empty])


@dataclass(frozen=True, eq=False)
class ModelStructure:
    """The constraint matrix of a shape in compressed sparse column form, and the layout it follows."""

    layout: ModelLayout
    start: IndexArray
    index: IndexArray
    value: FloatArray


def build_structure(shape: ModelShape) -> ModelStructure:
    """The matrix of a shape, assembled as (row, column, value) triplets and sorted by column."""
    layout = ModelLayout(shape)
    steps = shape.steps
    dt = shape.step_hours
    ones = np.ones(steps)
    rows: list[IndexArray] = []
    cols: list[IndexArray] = []
    values: list[FloatArray] = []

    def add(row: IndexArray, column: IndexArray, value: FloatArray) -> None:
        rows.append(row)
        cols.append(column)
        values.append(value)

    for b, (eta_charge, eta_discharge) in enumerate(shape.efficiencies):
        energy_rows = layout.energy_rows[b]
        add(energy_rows, layout.energy[b], ones)
        add(energy_rows[1:], layout.energy[b][:-1], -ones[1:])
        add(energy_rows, layout.charge[b], np.full(steps, -eta_charge * dt))
        add(energy_rows, layout.discharge[b], np.full(steps, dt / eta_discharge))
        if shape.soft_soc[b]:
            soc_rows = layout.soc_rows[b]
            add(soc_rows, layout.energy[b], ones)
            add(soc_rows, layout.reserve_slack[b], ones)
            add(soc_rows, layout.low_slack[b], ones)
            add(soc_rows, layout.high_slack[b], -ones)
        target = np.array([layout.target_rows[b]] * 3, dtype=np.int32)
        add(
            target,
            np.array([layout.energy[b][-1], layout.target_under[b], layout.target_over[b]], dtype=np.int32),
            np.array([1.0, 1.0, -1.0]),
        )
        add(layout.balance_rows, layout.charge[b], -ones)
        add(layout.balance_rows, layout.discharge[b], ones)
        if shape.binaries:
            # The u coefficients are the power limits, set per solve (ModelData.mode_coefficients).
            add(layout.charge_rows[b], layout.charge[b], ones)
            add(layout.charge_rows[b], layout.mode[b], -ones)
            add(layout.discharge_rows[b], layout.discharge[b], ones)
            add(layout.discharge_rows[b], layout.mode[b], ones)
    for k, (_, eta_charge, eta_discharge, semi) in enumerate(shape.vehicles):
        energy_rows = layout.vehicle_energy_rows[k]
        add(energy_rows, layout.vehicle_energy[k], ones)
        add(energy_rows[1:], layout.vehicle_energy[k][:-1], -ones[1:])
        add(energy_rows, layout.vehicle_charge[k], np.full(steps, -eta_charge * dt))
        add(energy_rows, layout.vehicle_discharge[k], np.full(steps, dt / eta_discharge))
        add(layout.vehicle_target_rows[k], layout.vehicle_energy[k], ones)
        add(layout.vehicle_target_rows[k], np.full(steps, layout.vehicle_short[k], dtype=np.int32), ones)
        add(layout.balance_rows, layout.vehicle_charge[k], -ones)
        add(layout.balance_rows, layout.vehicle_discharge[k], ones)
        if semi:
            # The on/back coefficients are the car's rated and minimum power, set per solve.
            for flow, mode, upper_rows, lower_rows in (
                (
                    layout.vehicle_charge[k],
                    layout.vehicle_on[k],
                    layout.vehicle_on_upper_rows[k],
                    layout.vehicle_on_lower_rows[k],
                ),
                (
                    layout.vehicle_discharge[k],
                    layout.vehicle_back[k],
                    layout.vehicle_back_upper_rows[k],
                    layout.vehicle_back_lower_rows[k],
                ),
            ):
                add(upper_rows, flow, ones)
                add(upper_rows, mode, -ones)
                add(lower_rows, flow, ones)
                add(lower_rows, mode, -ones)
            add(layout.vehicle_exclusive_rows[k], layout.vehicle_on[k], ones)
            add(layout.vehicle_exclusive_rows[k], layout.vehicle_back[k], ones)
    for flow, sign in (
        (layout.grid_import, 1.0),
        (layout.import_over, 1.0),
        (layout.grid_export, -1.0),
        (layout.export_over, -1.0),
    ):
        add(layout.balance_rows, flow, np.full(steps, sign))
    if shape.demand_charge:
        add(layout.demand_rows, layout.grid_import, ones)
        add(layout.demand_rows, layout.import_over, ones)
        add(layout.demand_rows, np.full(steps, layout.peak, dtype=np.int32), -ones)
    if shape.binaries:
        for flow in (layout.grid_import, layout.import_over):
            add(layout.import_rows, flow, ones)
        for flow in (layout.grid_export, layout.export_over):
            add(layout.export_rows, flow, ones)
        add(layout.import_rows, layout.direction, -ones)  # -M_imp[t], set per solve
        add(layout.export_rows, layout.direction, ones)  # +M_exp[t], set per solve
    row = np.concatenate(rows)
    column = np.concatenate(cols)
    value = np.concatenate(values)
    order = np.lexsort((row, column))
    start = np.searchsorted(column[order], np.arange(layout.column_count + 1)).astype(np.int32)
    return ModelStructure(
        layout=layout,
        start=start,
        index=row[order].astype(np.int32),
        value=value[order],
    )


@dataclass(frozen=True, eq=False)
class ModelData:
    """Everything of one problem that changes in place between solves of the same shape."""

    cost: FloatArray
    column_lower: FloatArray
    column_upper: FloatArray
    row_lower: FloatArray
    row_upper: FloatArray
    offset: float
    # With binaries: the (row, column, value) coefficients of u and v, and which of them are integers.
    coefficient_rows: IndexArray
    coefficient_columns: IndexArray
    coefficient_values: FloatArray
    integrality: npt.NDArray[np.uint8]


def model_data(problem: SiteProblem, layout: ModelLayout, penalties: Penalties) -> ModelData:
    """Costs, bounds and right-hand sides (and with binaries the big-M coefficients) for `problem`."""
    shape = layout.shape
    dt = problem.step_hours
    inf = np.inf
    cost = np.zeros(layout.column_count)
    lower = np.zeros(layout.column_count)
    upper = np.full(layout.column_count, inf)
    row_lower = np.zeros(layout.row_count)
    row_upper = np.zeros(layout.row_count)
    offset = 0.0

    net_load = problem.load_kw - problem.pv_kw
    max_charge = sum(battery.max_charge_kw for battery in problem.batteries)
    max_charge += sum(vehicle.max_power_kw for vehicle in problem.vehicles)
    max_discharge = sum(battery.max_discharge_kw for battery in problem.batteries)
    max_discharge += sum(vehicle.max_discharge_kw for vehicle in problem.vehicles)
    # What the site can physically draw or feed in (PV is not curtailed, the load is what it is).
    physical_import = np.maximum(0.0, net_load + max_charge)
    physical_export = np.maximum(0.0, -net_load + max_discharge)

    for b, battery in enumerate(problem.batteries):
        capacity = battery.capacity_kwh
        upper[layout.charge[b]] = battery.max_charge_kw
        upper[layout.discharge[b]] = battery.max_discharge_kw
        if shape.soft_soc[b]:
            upper[layout.energy[b]] = capacity
        else:
            lower[layout.energy[b]] = capacity * battery.reserve_floor_pct / 100
            upper[layout.energy[b]] = capacity * battery.soc_max_pct / 100
        cost[layout.reserve_slack[b]] = penalties.reserve
        upper[layout.reserve_slack[b]] = capacity * (battery.reserve_floor_pct - battery.soc_min_pct) / 100
        cost[layout.low_slack[b]] = penalties.soc_bounds
        cost[layout.high_slack[b]] = penalties.soc_bounds
        energy_rows = layout.energy_rows[b]
        row_lower[energy_rows[0]] = row_upper[energy_rows[0]] = capacity * battery.soc_initial_pct / 100
        row_lower[layout.soc_rows[b]] = capacity * battery.reserve_floor_pct / 100
        row_upper[layout.soc_rows[b]] = capacity * battery.soc_max_pct / 100
        target_row = layout.target_rows[b]
        under, over = layout.target_under[b], layout.target_over[b]
        cost[under] = cost[over] = penalties.target
        if battery.soc_target_pct is None:
            row_lower[target_row], row_upper[target_row] = -inf, inf
            upper[under] = upper[over] = 0.0
        else:
            target = capacity * battery.soc_target_pct / 100
            row_lower[target_row] = target
            row_upper[target_row] = target if battery.target_mode is TargetMode.EXACT else inf
            if battery.target_mode is TargetMode.AT_LEAST:
                upper[over] = 0.0

    vehicle_rows: list[IndexArray] = []
    vehicle_columns: list[IndexArray] = []
    vehicle_values: list[FloatArray] = []
    vehicle_integers: list[npt.NDArray[np.uint8]] = []
    for k, vehicle in enumerate(problem.vehicles):
        plugged = vehicle.plugged(shape.steps)
        capacity = vehicle.capacity_kwh
        initial = capacity * vehicle.soc_initial_pct / 100
        upper[layout.vehicle_charge[k]] = np.where(plugged, vehicle.max_power_kw, 0.0)
        upper[layout.vehicle_discharge[k]] = np.where(plugged, vehicle.max_discharge_kw, 0.0)
        if vehicle.kind is EvKind.V2G:
            lower[layout.vehicle_energy[k]] = min(initial, capacity * vehicle.soc_min_pct / 100)
        upper[layout.vehicle_energy[k]] = max(capacity, initial)
        cost[layout.vehicle_short[k]] = penalties.target
        energy_rows = layout.vehicle_energy_rows[k]
        row_lower[energy_rows[0]] = row_upper[energy_rows[0]] = initial
        target_rows = layout.vehicle_target_rows[k]
        row_lower[target_rows] = -inf
        row_upper[target_rows] = inf
        target_step = vehicle.target_step(shape.steps)
        if target_step is not None and vehicle.target_soc_pct is not None:
            row_lower[target_rows[target_step]] = capacity * vehicle.target_soc_pct / 100
        else:
            upper[layout.vehicle_short[k]] = 0.0
        if layout.vehicle_on[k].size:
            integer = plugged.astype(np.uint8)
            for flow_upper, mode, upper_rows, lower_rows in (
                (
                    upper[layout.vehicle_charge[k]],
                    layout.vehicle_on[k],
                    layout.vehicle_on_upper_rows[k],
                    layout.vehicle_on_lower_rows[k],
                ),
                (
                    upper[layout.vehicle_discharge[k]],
                    layout.vehicle_back[k],
                    layout.vehicle_back_upper_rows[k],
                    layout.vehicle_back_lower_rows[k],
                ),
            ):
                upper[mode] = np.where(flow_upper > 0, 1.0, 0.0)
                row_lower[upper_rows] = -inf
                row_upper[lower_rows] = inf
                vehicle_rows += [upper_rows, lower_rows]
                vehicle_columns += [mode, mode]
                vehicle_values += [-np.maximum(flow_upper, 0.0), -np.minimum(vehicle.floor_kw, flow_upper)]
                vehicle_integers.append(integer & (flow_upper > 0).astype(np.uint8))
            row_lower[layout.vehicle_exclusive_rows[k]] = -inf
            row_upper[layout.vehicle_exclusive_rows[k]] = 1.0

    cost[layout.grid_import] = problem.import_price * dt
    cost[layout.import_over] = (problem.import_price + penalties.site_limit) * dt
    cost[layout.grid_export] = -problem.export_price * dt
    cost[layout.export_over] = (penalties.site_limit - problem.export_price) * dt
    upper[layout.grid_import] = np.minimum(problem.import_limit_kw, physical_import)
    upper[layout.import_over] = np.maximum(0.0, physical_import - problem.import_limit_kw)
    upper[layout.grid_export] = np.minimum(problem.export_limit_kw, physical_export)
    upper[layout.export_over] = np.maximum(0.0, physical_export - problem.export_limit_kw)
    row_lower[layout.balance_rows] = row_upper[layout.balance_rows] = net_load

    if shape.demand_charge and problem.demand_charge is not None:
        charge = problem.demand_charge
        cost[layout.peak] = charge.price_per_kw
        lower[layout.peak] = charge.period_peak_kw
        offset = -charge.price_per_kw * charge.period_peak_kw
        row_lower[layout.demand_rows] = -inf

    empty_index = np.empty(0, dtype=np.int32)
    coefficient_rows = coefficient_columns = empty_index
    coefficient_values = np.empty(0)
    integrality = np.empty(0, dtype=np.uint8)
    row_parts: list[IndexArray] = []
    column_parts: list[IndexArray] = []
    value_parts: list[FloatArray] = []
    integer_parts: list[npt.NDArray[np.uint8]] = []
    if shape.binaries:
        battery_steps, grid_steps = exclusivity_steps(problem)
        for b, battery in enumerate(problem.batteries):
            upper[layout.mode[b]] = 1.0
            row_lower[layout.charge_rows[b]] = -inf
            row_lower[layout.discharge_rows[b]] = -inf
            row_upper[layout.discharge_rows[b]] = battery.max_discharge_kw
            row_parts += [layout.charge_rows[b], layout.discharge_rows[b]]
            column_parts += [layout.mode[b], layout.mode[b]]
            value_parts += [
                np.full(shape.steps, -battery.max_charge_kw),
                np.full(shape.steps, battery.max_discharge_kw),
            ]
            integer_parts.append(battery_steps.astype(np.uint8))
        upper[layout.direction] = 1.0
        row_lower[layout.import_rows] = -inf
        row_lower[layout.export_rows] = -inf
        row_upper[layout.export_rows] = physical_export
        row_parts += [layout.import_rows, layout.export_rows]
        column_parts += [layout.direction, layout.direction]
        value_parts += [-physical_import, physical_export]
        integer_parts.append(grid_steps.astype(np.uint8))
    # The cars' binaries come after the batteries' and the grid's, as in ModelLayout.binary_columns.
    row_parts += vehicle_rows
    column_parts += vehicle_columns
    value_parts += vehicle_values
    integer_parts += vehicle_integers
    if row_parts:
        coefficient_rows = np.concatenate(row_parts)
        coefficient_columns = np.concatenate(column_parts)
        coefficient_values = np.concatenate(value_parts)
        integrality = np.concatenate(integer_parts)

    return ModelData(
        cost=cost,
        column_lower=lower,
        column_upper=upper,
        row_lower=row_lower,
        row_upper=row_upper,
        offset=offset,
        coefficient_rows=coefficient_rows,
        coefficient_columns=coefficient_columns,
        coefficient_values=coefficient_values,
        integrality=integrality,
    )
