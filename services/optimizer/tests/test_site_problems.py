"""The pure parts of planning: which batteries can be planned, step values from the API's series, MPC steps."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gridloop_common.contracts.grid_services import MpcRequest
from optimizer.mpc import expected_vehicle_soc, horizon_steps, kept_steps, next_replan, plan_start
from optimizer.problem import Battery, EvKind
from optimizer.repository import BatteryState, MeterState, RegisteredBattery, RegisteredCharger
from optimizer.site_problems import (
    live_load_kw,
    plan_writes,
    plannable_batteries,
    plannable_vehicles,
    site_answer,
    site_problem,
    step_values,
)
from optimizer.solver import solve

AT = datetime(2026, 12, 7, 12, tzinfo=UTC)


def test_batteries_without_capacity_power_reading_or_with_refused_metadata_are_left_out_with_the_reason() -> None:
    registered = [
        RegisteredBattery(
            "good",
            "alpha",
            {"capacity_kwh": 10, "max_power_kw": 5, "backup_reserve_percentage": 20, "state_of_health_percentage": 90},
        ),
        RegisteredBattery("no-capacity", "alpha", {"max_power_kw": 5}),
        RegisteredBattery("no-power", "alpha", {"capacity_kwh": 10}),
        RegisteredBattery("refused", "alpha", {"capacity_kwh": True, "max_power_kw": 5}),
        RegisteredBattery("unread", "beta", {"capacity_kwh": 10, "max_power_kw": 5}),
    ]
    states = {name: BatteryState(name, AT, 40.0, 0.0) for name in ("good", "no-capacity", "no-power", "refused")}

    found = plannable_batteries(registered, states)

    [battery] = found.by_site["alpha"]
    assert (battery.name, battery.capacity_kwh, battery.max_charge_kw, battery.max_discharge_kw) == ("good", 9.0, 5, 5)
    assert (battery.reserve_pct, battery.soc_initial_pct, battery.soc_target_pct) == (20, 40.0, 40.0)
    reasons = {each.device: each.reason for each in found.left_out}
    assert reasons["no-capacity"] == "metadata.capacity_kwh is missing"
    assert reasons["no-power"] == "metadata.max_power_kw is missing"
    assert reasons["refused"].startswith("invalid registry metadata: metadata.capacity_kwh")
    assert reasons["unread"] == "no state-of-charge reading yet"
    assert "beta" not in found.by_site


def test_step_values_take_the_latest_instant_at_or_before_each_step() -> None:
    points = {AT + timedelta(minutes=10): 0.2, AT + timedelta(minutes=30): 0.3}
    starts = [AT + timedelta(minutes=10 * index) for index in range(5)]
    assert step_values(points, starts) == [None, 0.2, 0.2, 0.3, 0.3]


def test_live_load_is_the_meter_net_of_the_batteries_while_the_reading_is_fresh() -> None:
    battery = Battery(name="b", capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5, soc_initial_pct=50)
    states = {"b": BatteryState("b", AT, 50, 2.0)}  # charging at 2 kW
    meter = MeterState("alpha", AT - timedelta(minutes=5), 5.0)
    fresh = timedelta(minutes=20)
    assert live_load_kw(meter, states, [battery], pv_kw=1.0, now=AT, fresh_for=fresh) == 4.0
    assert live_load_kw(meter, states, [battery], pv_kw=0.0, now=AT + timedelta(hours=1), fresh_for=fresh) is None
    assert live_load_kw(None, states, [battery], pv_kw=0.0, now=AT, fresh_for=fresh) is None


def test_mpc_steps_recede_on_the_grid_of_the_start_and_end_at_the_stop() -> None:
    request = MpcRequest.model_validate(
        {
            "prices": {AT.isoformat(): 0.1},
            "power_limit": {AT.isoformat(): 5.0},
            "interval": 10,
            "start": AT.isoformat(),
            "stop": (AT + timedelta(minutes=55)).isoformat(),
        }
    )
    assert horizon_steps(request) == 6  # the last one partial
    assert plan_start(request, AT - timedelta(minutes=3)) == AT
    assert plan_start(request, AT + timedelta(minutes=17)) == AT + timedelta(minutes=10)
    assert kept_steps(request, AT + timedelta(minutes=10)) == 5
    assert kept_steps(request, AT + timedelta(minutes=60)) == 0
    assert next_replan(request, AT) == AT + timedelta(minutes=10)
    assert next_replan(request, AT + timedelta(minutes=50)) is None


def _charger(name: str, device_type: str = "electric_vehicle_v1g", **metadata: object) -> RegisteredCharger:
    car = {"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 80, "initial_soc_pct": 30}
    base: dict[str, object] = {"max_power_kw": 11, "phases": 3, "min_current_a": 6, "ev": car}
    base.update(metadata)
    return RegisteredCharger(name, "alpha", device_type, base)


def test_a_charger_with_its_car_in_metadata_becomes_an_ev_with_its_plug_in_window() -> None:
    """From 20:00 local (Toronto, UTC-5 in December) on 15-minute steps: arrival 18:00 is past, so plugged in
    from step 0; departure 07:30 the next morning is 11.5 h = 46 steps away; 6 A on 3 phases = 4.14 kW."""
    start = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)  # 20:00 in Toronto
    registered = [
        _charger(
            "v1g",
            ev={
                "capacity_kwh": 60,
                "departure": "07:30",
                "arrival": "18:00",
                "target_soc_pct": 80,
                "initial_soc_pct": 30,
            },
        ),
        _charger("v2g", "electric_vehicle_v2g", backup_reserve_percentage=25),
        _charger("on-off", "on_off_ev_charger", max_power_kw=7.4),
    ]
    found = plannable_vehicles(
        registered, {}, start=start, step=timedelta(minutes=15), zones={"alpha": ZoneInfo("America/Toronto")}
    )
    assert found.left_out == []
    v1g, v2g, on_off = found.by_site["alpha"]
    assert (v1g.kind, v1g.arrival_step, v1g.departure_step) == (EvKind.V1G, 0, 46)
    assert (v1g.capacity_kwh, v1g.soc_initial_pct, v1g.target_soc_pct) == (60, 30, 80)
    assert v1g.min_power_kw == pytest.approx(4.14)
    assert (v2g.kind, v2g.soc_min_pct) == (EvKind.V2G, 25)
    assert (on_off.kind, on_off.floor_kw) == (EvKind.ON_OFF, 7.4)


def test_a_car_that_arrives_later_is_plugged_in_from_its_arrival_step() -> None:
    """From 12:00 UTC: arrival 18:00 is step 24 on 15-minute steps, departure 07:30 the next day step 78."""
    car = {"capacity_kwh": 60, "departure": "07:30", "arrival": "18:00", "target_soc_pct": 80, "initial_soc_pct": 30}
    found = plannable_vehicles(
        [_charger("v1g", ev=car)], {}, start=AT, step=timedelta(minutes=15), zones={"alpha": ZoneInfo("UTC")}
    )
    [vehicle] = found.by_site["alpha"]
    assert (vehicle.arrival_step, vehicle.departure_step) == (24, 78)


def test_chargers_missing_what_a_plan_needs_are_left_out_with_the_reason() -> None:
    registered = [
        _charger("no-power", max_power_kw=None),
        _charger("no-car", ev=None),
        _charger("no-soc", ev={"capacity_kwh": 60, "departure": "07:30", "target_soc_pct": 80}),
        _charger("bad-time", ev={"capacity_kwh": 60, "departure": "7h30", "target_soc_pct": 80}),
    ]
    found = plannable_vehicles(registered, {}, start=AT, step=timedelta(minutes=15), zones={})
    reasons = {each.device: each.reason for each in found.left_out}
    assert reasons["no-power"] == "metadata.max_power_kw is missing"
    assert reasons["no-car"].startswith("metadata.ev is missing")
    assert reasons["no-soc"].startswith("no SoC")
    assert reasons["bad-time"].startswith("invalid registry metadata: metadata.ev.departure")
    assert found.by_site == {}
    # A reading from the charger wins over metadata and makes the car plannable.
    with_reading = plannable_vehicles([registered[2]], {"no-soc": 55.0}, start=AT, step=timedelta(minutes=15), zones={})
    assert with_reading.by_site["alpha"][0].soc_initial_pct == 55.0


def test_a_site_with_a_v1g_car_and_a_battery_plans_the_car_in_the_cheap_steps_and_writes_its_plan() -> None:
    """Four hourly steps, the car plugged in throughout, 60 kWh at 30 % to 40 % (6 kWh) by the end: it charges
    6 kWh in the cheap step 2 (above its 4.14 kW minimum); the answer and the plan writes name it."""
    car = {"capacity_kwh": 60, "departure": "16:00", "target_soc_pct": 40, "initial_soc_pct": 30}
    found = plannable_vehicles(
        [_charger("car", ev=car)], {}, start=AT, step=timedelta(hours=1), zones={"alpha": ZoneInfo("UTC")}
    )
    battery = Battery(
        name="b", capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5, soc_initial_pct=50, soc_target_pct=50
    )
    problem = site_problem(
        start=AT,
        step=timedelta(hours=1),
        prices=[0.3, 0.3, 0.05, 0.3],
        load_kw=[1.0] * 4,
        pv_kw=[0.0] * 4,
        batteries=[battery],
        import_limit_kw=[None] * 4,
        export_limit_kw=None,
        vehicles=found.by_site["alpha"],
    )
    plan = solve(problem)
    answer = site_answer("alpha", plan, start=AT, step=timedelta(hours=1), steps=4)
    [car_answer] = [device for device in answer["devices"] if device["name"] == "car"]
    assert car_answer["type"] == "electric_vehicle_v1g"
    assert car_answer["setpoints"] == pytest.approx([0, 0, 6.0 / 0.9, 0], abs=1e-4)  # 90 % charging efficiency
    writes = {write.device: write for write in plan_writes("alpha", plan, start=AT, step=timedelta(hours=1), steps=4)}
    assert set(writes) == {"b", "car"}
    assert writes["car"].setpoints_kw == pytest.approx([0, 0, 6.0 / 0.9, 0], abs=1e-4)
    assert "relaxed" not in answer
    # A plan from the MIP's relaxation, rounded (the solver's fallback out of time): the answer says so.
    relaxed = replace(plan, relaxed=True)
    assert site_answer("alpha", relaxed, start=AT, step=timedelta(hours=1), steps=4)["relaxed"] is True


def test_an_mpc_re_plan_starts_a_car_where_the_last_plan_expected_it() -> None:
    """No charger telemetry is stored: a re-plan one step later starts the car at the SoC the last plan had at
    the end of its first step; a re-plan past that plan's steps knows nothing (metadata's SoC then)."""
    paths = {"car": (AT, timedelta(minutes=10), [31.0, 33.5, 33.5])}
    assert expected_vehicle_soc(paths, AT + timedelta(minutes=10)) == {"car": 31.0}
    assert expected_vehicle_soc(paths, AT + timedelta(minutes=30)) == {"car": 33.5}
    assert expected_vehicle_soc(paths, AT + timedelta(minutes=40)) == {}
    assert expected_vehicle_soc(paths, AT) == {}
