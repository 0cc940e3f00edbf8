"""The optimizer core's electric-vehicle model against optima worked out by hand, and properties of every plan.

Unless a test says otherwise: steps of 1 h, a 40 kWh car, lossless charging, a 1 kW site load, no PV, no
limits, no battery. Each hand-computed optimum is derived in the test's docstring.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.problem import (
    Battery,
    ElectricVehicle,
    EvKind,
    Plan,
    PlanStatus,
    ProblemError,
    SiteProblem,
    ViolatedLimit,
)
from optimizer.solver import PlanSolver, round_vehicle_power, solve

START = datetime(2026, 6, 1, tzinfo=UTC)
TOLERANCE = 1e-6


def vehicle(**overrides: Any) -> ElectricVehicle:
    values: dict[str, Any] = {
        "name": "car",
        "kind": EvKind.V1G,
        "capacity_kwh": 40.0,
        "soc_initial_pct": 50.0,
        "max_power_kw": 11.0,
        "min_power_kw": 0.0,
        "charge_efficiency": 1.0,
        "discharge_efficiency": 1.0,
    }
    values.update(overrides)
    return ElectricVehicle(**values)


def problem(prices: list[float], vehicles: list[ElectricVehicle], **overrides: Any) -> SiteProblem:
    values: dict[str, Any] = {
        "start": START,
        "step_hours": 1.0,
        "import_price": prices,
        "export_price": [0.0] * len(prices),
        "load_kw": [1.0] * len(prices),
        "vehicles": vehicles,
    }
    values.update(overrides)
    return SiteProblem.create(**values)


def assert_runnable(problem: SiteProblem, plan: Plan) -> None:
    """Every hard bound of every car: the window, the rated power, the floor (no step between 0 and the
    minimum power; on/off exactly 0 or rated), charging only for V1G and on/off, 0..capacity, and V2G
    discharging only from above its minimum SoC."""
    for car in problem.vehicles:
        schedule = plan.vehicle(car.name)
        power = schedule.power_kw
        plugged = car.plugged(problem.steps)
        assert np.all(power[~plugged] == 0.0)
        assert np.all(np.abs(power) <= car.max_power_kw + TOLERANCE)
        running = np.abs(power) > 0
        assert np.all(np.abs(power[running]) >= car.floor_kw - TOLERANCE), power
        if car.kind is EvKind.ON_OFF:
            assert np.all(np.isclose(power[running], car.max_power_kw)), power
        if car.kind is not EvKind.V2G:
            assert np.all(power >= 0.0)
        assert np.all(schedule.energy_kwh >= -TOLERANCE)
        assert np.all(schedule.energy_kwh <= car.capacity_kwh + TOLERANCE)
        if car.kind is EvKind.V2G:
            discharging = np.flatnonzero(power < 0)
            floor = car.capacity_kwh * car.soc_min_pct / 100
            assert car.soc_initial_pct >= car.soc_min_pct or discharging.size == 0
            assert np.all(schedule.energy_kwh[discharging + 1] >= floor - TOLERANCE)
    # The grid flows include the cars' and the batteries' power.
    flows = sum((plan.vehicle(car.name).power_kw for car in problem.vehicles), np.zeros(problem.steps))
    flows = flows + sum((battery.power_kw for battery in plan.batteries), np.zeros(problem.steps))
    assert np.allclose(plan.grid_import_kw - plan.grid_export_kw, problem.load_kw - problem.pv_kw + flows)


def test_a_v1g_car_charges_in_the_cheapest_hours_and_meets_its_target() -> None:
    """12 kWh to store (50 % -> 80 % of 40 kWh) in steps 1..6 (departure at the start of step 7), no minimum
    current: 11 kWh in the cheapest hour (5, at 0.05) and the last 1 kWh in the next cheapest (2, at 0.1).
    Cost: 8 kWh of load at 0.3 except 1 kWh at 0.1 and 1 at 0.05 = 1.95; car 11*0.05 + 1*0.1 = 0.65."""
    prices = [0.3] * 8
    prices[2], prices[5] = 0.1, 0.05
    car = vehicle(arrival_step=1, departure_step=7, target_soc_pct=80.0)
    plan = solve(problem(prices, [car]))
    assert plan.status is PlanStatus.OPTIMAL
    assert plan.binaries == 0  # no minimum current: a plain LP
    assert np.allclose(plan.vehicle("car").power_kw, [0, 0, 1, 0, 0, 11, 0, 0])
    assert plan.vehicle("car").soc_pct[7] == pytest.approx(80.0)
    assert plan.violations == ()
    assert plan.energy_cost == pytest.approx(1.95 + 0.65)


def test_the_minimum_current_makes_the_last_kwh_a_step_at_the_minimum_power() -> None:
    """As above with a three-phase 6 A minimum (4.14 kW): the 1 kWh step is not runnable. Options: 11 kWh at
    0.05 and then at least 4.14 kWh more at 0.1 (0.964, overshooting the target), or 4.14 at 0.1 and 7.86 at
    0.05 (0.807): the optimum is the second, every step 0 or at least 4.14 kW."""
    prices = [0.3] * 8
    prices[2], prices[5] = 0.1, 0.05
    car = vehicle(arrival_step=1, departure_step=7, target_soc_pct=80.0, min_power_kw=4.14)
    plan = solve(problem(prices, [car]))
    assert plan.status is PlanStatus.OPTIMAL
    assert plan.binaries == 6  # one per plugged-in step
    assert np.allclose(plan.vehicle("car").power_kw, [0, 0, 4.14, 0, 0, 7.86, 0, 0])
    assert plan.energy_cost == pytest.approx(8 * 0.3 - 0.3 - 0.3 + 0.1 + 0.05 + 4.14 * 0.1 + 7.86 * 0.05)
    assert_runnable(plan_problem := problem(prices, [car]), solve(plan_problem))


def test_an_on_off_charger_runs_at_its_rated_power_in_the_cheapest_hours() -> None:
    """7 kW on/off, 14 kWh to store (50 % -> 85 %): exactly two hours at 7 kW, the two cheapest (3 and 6)."""
    prices = [0.3, 0.25, 0.2, 0.05, 0.3, 0.2, 0.06, 0.3]
    car = vehicle(kind=EvKind.ON_OFF, max_power_kw=7.0, target_soc_pct=85.0)
    plan = solve(problem(prices, [car]))
    assert plan.status is PlanStatus.OPTIMAL
    assert np.allclose(plan.vehicle("car").power_kw, [0, 0, 0, 7, 0, 0, 7, 0])
    assert plan.violations == ()


def test_a_target_the_window_cannot_reach_is_a_priced_shortfall_at_departure() -> None:
    """20 % -> 100 % is 32 kWh; two plugged-in hours at 11 kW give 22: the car charges flat out and the plan
    reports 10 kWh missing at its last plugged-in step (2)."""
    car = vehicle(soc_initial_pct=20.0, arrival_step=1, departure_step=3, target_soc_pct=100.0)
    plan = solve(problem([0.2] * 6, [car]))
    assert np.allclose(plan.vehicle("car").power_kw, [0, 11, 11, 0, 0, 0])
    [violation] = plan.violations
    assert violation.limit is ViolatedLimit.DEPARTURE_TARGET
    assert (violation.device, violation.step, violation.unit) == ("car", 2, "kWh")
    assert violation.amount == pytest.approx(10.0)


def test_a_v2g_car_discharges_under_a_high_price_down_to_its_minimum_soc() -> None:
    """30 % of 40 kWh with a 20 % minimum: 4 kWh to give. Plugged in from step 1 (so it cannot fill up at
    0.1 first), the 10 kW load at 1.0 in step 1 takes all of it (4 kW, above the 1.38 kW minimum); no target,
    export earns nothing, so nothing else happens."""
    car = vehicle(kind=EvKind.V2G, soc_initial_pct=30.0, soc_min_pct=20.0, min_power_kw=1.38, arrival_step=1)
    prices = [0.1, 1.0, 0.1, 0.1]
    plan = solve(problem(prices, [car], load_kw=[10.0] * 4))
    assert np.allclose(plan.vehicle("car").power_kw, [0, -4, 0, 0])
    assert plan.vehicle("car").soc_pct[-1] == pytest.approx(20.0)
    assert_runnable(problem(prices, [car], load_kw=[10.0] * 4), plan)


def test_a_v2g_car_below_its_minimum_soc_is_never_discharged() -> None:
    car = vehicle(kind=EvKind.V2G, soc_initial_pct=15.0, soc_min_pct=20.0, min_power_kw=1.38)
    plan = solve(problem([0.1, 1.0, 0.1, 0.1], [car], load_kw=[10.0] * 4))
    assert np.all(plan.vehicle("car").power_kw >= 0.0)


def test_a_v2g_car_refills_to_its_target_after_discharging_in_the_dear_hour() -> None:
    """At 50 % with target 50 % at the end: giving 5 kWh in the dear hour (1.0, 5 kW load) and taking them back
    at 0.1 later saves 4.5; the car ends at its target."""
    car = vehicle(kind=EvKind.V2G, soc_min_pct=20.0, min_power_kw=1.38, target_soc_pct=50.0)
    prices = [0.1, 0.1, 1.0, 0.1]
    plan = solve(problem(prices, [car], load_kw=[5.0] * 4))
    power = plan.vehicle("car").power_kw
    assert power[2] == pytest.approx(-5.0)
    assert power[3] == pytest.approx(5.0)
    assert plan.vehicle("car").soc_pct[-1] == pytest.approx(50.0)
    assert plan.violations == ()


def test_a_tiny_time_limit_still_gives_a_runnable_plan_from_the_relaxation() -> None:
    """A day of 96 quarter-hours, a 6 A three-phase V2G car and a battery: the MIP cannot finish in a
    microsecond; the plan comes from the LP relaxation, rounded, and keeps every hard bound."""
    rng = np.random.default_rng(7)
    prices = list(rng.uniform(0.05, 0.4, 96))
    car = vehicle(
        kind=EvKind.V2G,
        soc_initial_pct=30.0,
        soc_min_pct=20.0,
        min_power_kw=4.14,
        arrival_step=8,
        departure_step=80,
        target_soc_pct=80.0,
        charge_efficiency=0.92,
        discharge_efficiency=0.92,
    )
    battery = Battery(name="battery", capacity_kwh=10.0, max_charge_kw=5.0, max_discharge_kw=5.0, soc_initial_pct=50)
    site = problem(prices, [car], step_hours=0.25, load_kw=list(rng.uniform(0.5, 4.0, 96)), batteries=[battery])
    plan = solve(site, time_limit_s=1e-6)
    assert plan.status is PlanStatus.TIME_LIMIT
    assert plan.relaxed
    assert np.any(plan.vehicle("car").power_kw > 0)
    assert_runnable(site, plan)


def test_rounding_a_relaxed_schedule_gives_zero_or_at_least_the_minimum_and_keeps_the_energy() -> None:
    """0.5 kW wanted for 6 hours with a 1.38 kW minimum: the rounding runs at least 1.38 kW in some hours and 0
    in the others, carrying the difference, so the energy delivered is at least the 3 kWh wanted and at most a
    step's minimum more."""
    car = vehicle(min_power_kw=1.38)
    power, energy = round_vehicle_power(car, np.full(6, 0.5), 1.0)
    running = power[power > 0]
    assert running.size and np.all(running >= 1.38 - 1e-9) and np.all(running <= 11.0)
    assert 3.0 - 1e-9 <= float(power.sum()) <= 3.0 + 1.38
    assert energy[-1] == pytest.approx(20.0 + float(power.sum()))


def test_rounding_places_charge_still_owed_at_the_end_of_the_window_so_the_target_energy_is_kept() -> None:
    """Wanted: 11, 11, 2 kW (24 kWh) with a 4.14 kW minimum and the car (4 kWh of 40) leaving after step 2:
    the forward pass rounds the last step's 2 kW to 0 (under half the floor, 2.07), owing 2 kWh, which then
    goes to that idle step at the floor: never less energy than wanted."""
    car = vehicle(min_power_kw=4.14, departure_step=3, soc_initial_pct=10.0)
    power, energy = round_vehicle_power(car, np.array([11.0, 11.0, 2.0, 0.0]), 1.0)
    assert np.allclose(power, [11, 11, 4.14, 0])
    assert energy[3] - energy[0] >= 24.0


def test_a_kept_model_with_a_car_solves_a_moved_window_like_a_fresh_build() -> None:
    """The departure moves (a receding horizon): only row and column bounds change, the matrix stays."""
    prices = [0.3, 0.2, 0.1, 0.05, 0.3, 0.2, 0.06, 0.3]
    first = problem(prices, [vehicle(min_power_kw=4.14, departure_step=7, target_soc_pct=80.0)])
    second = problem(prices, [vehicle(min_power_kw=4.14, arrival_step=2, departure_step=5, target_soc_pct=70.0)])
    solver = PlanSolver()
    solver.solve(first)
    kept = solver.solve(second)
    assert solver.model_count == 1
    fresh = solve(second)
    assert kept.objective == pytest.approx(fresh.objective)
    assert np.allclose(kept.vehicle("car").power_kw, fresh.vehicle("car").power_kw)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"min_power_kw": 12.0}, "vehicles[car].min_power_kw"),
        ({"arrival_step": 4, "departure_step": 2}, "vehicles[car].departure_step"),
        ({"capacity_kwh": 0.0}, "vehicles[car].capacity_kwh"),
        ({"target_soc_pct": 120.0}, "vehicles[car].target_soc_pct"),
        ({"charge_efficiency": 0.3}, "vehicles[car].charge_efficiency"),
    ],
)
def test_a_bad_car_is_refused_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ProblemError) as error:
        vehicle(**overrides)
    assert error.value.field == field


@st.composite
def ev_problems(draw: st.DrawFn) -> SiteProblem:
    steps = draw(st.integers(min_value=2, max_value=24))
    kind = draw(st.sampled_from(list(EvKind)))
    rated = draw(st.floats(min_value=1.0, max_value=22.0))
    arrival = draw(st.integers(min_value=0, max_value=steps))
    departure = draw(st.one_of(st.none(), st.integers(min_value=arrival, max_value=steps + 4)))
    car = ElectricVehicle(
        name="car",
        kind=kind,
        capacity_kwh=draw(st.floats(min_value=5.0, max_value=100.0)),
        soc_initial_pct=draw(st.floats(min_value=0.0, max_value=100.0)),
        max_power_kw=rated,
        min_power_kw=draw(st.floats(min_value=0.0, max_value=rated)),
        arrival_step=arrival,
        departure_step=departure,
        target_soc_pct=draw(st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0))),
        soc_min_pct=draw(st.floats(min_value=0.0, max_value=60.0)),
        charge_efficiency=draw(st.floats(min_value=0.5, max_value=1.0)),
        discharge_efficiency=draw(st.floats(min_value=0.5, max_value=1.0)),
    )
    prices = draw(st.lists(st.floats(min_value=-0.2, max_value=0.6), min_size=steps, max_size=steps))
    batteries = []
    if draw(st.booleans()):
        batteries.append(
            Battery(name="battery", capacity_kwh=10.0, max_charge_kw=5.0, max_discharge_kw=5.0, soc_initial_pct=50)
        )
    return SiteProblem.create(
        start=START,
        step_hours=draw(st.sampled_from([0.25, 0.5, 1.0])),
        import_price=prices,
        export_price=[min(price, 0.1) for price in prices],
        load_kw=draw(st.lists(st.floats(min_value=0.0, max_value=8.0), min_size=steps, max_size=steps)),
        vehicles=[car],
        batteries=batteries,
        import_limit_kw=draw(st.one_of(st.none(), st.floats(min_value=0.0, max_value=30.0))),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ev_problems())
def test_every_plan_with_a_car_keeps_every_hard_bound(site: SiteProblem) -> None:
    plan = solve(site)
    assert plan.status is PlanStatus.OPTIMAL, plan.solver_status
    assert_runnable(site, plan)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ev_problems())
def test_a_plan_with_a_car_always_comes_back_even_with_a_tiny_time_limit(site: SiteProblem) -> None:
    plan = solve(site, time_limit_s=1e-6)
    assert plan.status in {PlanStatus.OPTIMAL, PlanStatus.TIME_LIMIT}
    assert_runnable(site, plan)
