"""The pure parts of planning: which batteries can be planned, step values from the API's series, MPC steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gridloop_common.contracts.grid_services import MpcRequest
from optimizer.mpc import horizon_steps, kept_steps, next_replan, plan_start
from optimizer.problem import Battery
from optimizer.repository import BatteryState, MeterState, RegisteredBattery
from optimizer.site_problems import live_load_kw, plannable_batteries, step_values

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
