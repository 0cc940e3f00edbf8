"""Pure: a scheduler action → an EV charger's limit and the OCPP charging profile that carries it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from device_agent.chargers.charging_profile import (
    CarState,
    ChargerLimits,
    UnsupportedAction,
    plan_charging_limit,
    profile_request_2x,
    profile_request_16,
)
from gridloop_common.contracts import BatteryMode, DeviceAction, DeviceType, PowerMode

NOW = datetime(2026, 12, 7, 18, tzinfo=UTC)
V1G = ChargerLimits.of(DeviceType.ELECTRIC_VEHICLE_V1G, max_power_kw=11, phases=3, min_current_a=None)
V2G = ChargerLimits.of(DeviceType.ELECTRIC_VEHICLE_V2G, max_power_kw=None, phases=None, min_current_a=None)
ON_OFF = ChargerLimits.of(DeviceType.ON_OFF_EV_CHARGER, max_power_kw=7.4, phases=1, min_current_a=None)


def _action(mode: BatteryMode, setpoint_w: int | None = None, *, lasts_s: float | None = 3600) -> DeviceAction:
    return DeviceAction(
        device_name="car",
        mode=mode,
        power_mode=PowerMode.SETPOINT if setpoint_w is not None else None,
        setpoint_w=setpoint_w,
        issued_at=NOW,
        valid_until=None if lasts_s is None else NOW + timedelta(seconds=lasts_s),
    )


def test_the_limits_follow_the_registry_with_6_a_and_three_phases_by_default() -> None:
    assert (V1G.rated_w, V1G.minimum_w) == (11000, pytest.approx(4140.0))
    assert (V2G.rated_w, V2G.minimum_w) == (pytest.approx(11040.0), pytest.approx(4140.0))
    assert ON_OFF.minimum_w == pytest.approx(1380.0)


def test_v1g_takes_a_setpoint_clamps_it_to_rated_and_is_off_under_the_minimum() -> None:
    assert plan_charging_limit(_action(BatteryMode.CHARGE, 5000), V1G, now=NOW, hold_s=60).limit_w == 5000
    clamped = plan_charging_limit(_action(BatteryMode.CHARGE, 20000), V1G, now=NOW, hold_s=60)
    assert (clamped.limit_w, clamped.note) == (11000, "clamped to the rated 11000 W")
    off = plan_charging_limit(_action(BatteryMode.CHARGE, 3000), V1G, now=NOW, hold_s=60)
    assert off.limit_w == 0 and off.note is not None and "minimum current" in off.note
    assert plan_charging_limit(_action(BatteryMode.CHARGE), V1G, now=NOW, hold_s=60).limit_w == 11000
    assert plan_charging_limit(_action(BatteryMode.STANDBY), V1G, now=NOW, hold_s=60).limit_w == 0


def test_on_off_is_zero_or_rated() -> None:
    assert plan_charging_limit(_action(BatteryMode.CHARGE, 100), ON_OFF, now=NOW, hold_s=60).limit_w == 7400
    assert plan_charging_limit(_action(BatteryMode.STANDBY), ON_OFF, now=NOW, hold_s=60).limit_w == 0


def test_only_v2g_discharges() -> None:
    assert plan_charging_limit(_action(BatteryMode.DISCHARGE, 7000), V2G, now=NOW, hold_s=60).limit_w == -7000
    assert plan_charging_limit(_action(BatteryMode.DISCHARGE, 2000), V2G, now=NOW, hold_s=60).limit_w == 0
    with pytest.raises(UnsupportedAction, match="cannot discharge"):
        plan_charging_limit(_action(BatteryMode.DISCHARGE, 7000), V1G, now=NOW, hold_s=60)


def test_follow_load_is_refused_and_self_consumption_is_a_release_at_rated_power() -> None:
    follow = DeviceAction(
        device_name="car", mode=BatteryMode.DISCHARGE, power_mode=PowerMode.FOLLOW_LOAD, issued_at=NOW
    )
    with pytest.raises(UnsupportedAction, match="FOLLOW_LOAD"):
        plan_charging_limit(follow, V2G, now=NOW, hold_s=60)
    release = plan_charging_limit(_action(BatteryMode.SELF_CONSUMPTION), V1G, now=NOW, hold_s=60)
    assert (release.limit_w, release.released) == (11000, True)


def test_the_profile_ends_with_the_action_or_the_hold_whichever_is_first() -> None:
    assert plan_charging_limit(_action(BatteryMode.CHARGE, 5000, lasts_s=30), V1G, now=NOW, hold_s=60).valid_to == (
        NOW + timedelta(seconds=30)
    )
    assert plan_charging_limit(_action(BatteryMode.CHARGE, 5000, lasts_s=None), V1G, now=NOW, hold_s=60).valid_to == (
        NOW + timedelta(seconds=60)
    )


def test_the_profiles_are_tx_default_with_a_valid_to_in_watts() -> None:
    plan = plan_charging_limit(_action(BatteryMode.DISCHARGE, 7000), V2G, now=NOW, hold_s=60)

    v16 = profile_request_16(plan, profile_id=3, now=NOW)["cs_charging_profiles"]
    assert (v16["charging_profile_purpose"], v16["valid_to"]) == ("TxDefaultProfile", "2026-12-07T18:01:00Z")
    assert v16["charging_schedule"]["charging_rate_unit"] == "W"
    v201 = profile_request_2x(plan, profile_id=3, now=NOW, version="ocpp2.0.1")["charging_profile"]
    assert v201["charging_schedule"][0]["charging_schedule_period"] == [{"start_period": 0, "limit": -7000.0}]
    v21 = profile_request_2x(plan, profile_id=3, now=NOW, version="ocpp2.1")["charging_profile"]
    [period] = v21["charging_schedule"][0]["charging_schedule_period"]
    assert (period["operation_mode"], period["setpoint"], period["limit"]) == ("CentralSetpoint", -7000.0, 0.0)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_charging_limit(_action(BatteryMode.CHARGE, 5000), V1G, now=NOW.replace(tzinfo=None), hold_s=60)


def test_v2g_discharges_only_a_plugged_in_car_above_its_minimum_soc() -> None:
    discharge = _action(BatteryMode.DISCHARGE, 7000)

    plugged = plan_charging_limit(discharge, V2G, now=NOW, hold_s=60, car=CarState(True, 55.0, 20.0))
    assert plugged.limit_w == -7000
    unplugged = plan_charging_limit(discharge, V2G, now=NOW, hold_s=60, car=CarState(False, None))
    assert (unplugged.limit_w, unplugged.note) == (0, "no car plugged in: nothing to discharge")
    at_minimum = plan_charging_limit(discharge, V2G, now=NOW, hold_s=60, car=CarState(True, 20.0, 20.0))
    assert at_minimum.limit_w == 0
    assert at_minimum.note == "the car's SoC 20 % is at its minimum 20 %: no discharge"
    # Charging is not held back by either.
    charge = plan_charging_limit(_action(BatteryMode.CHARGE, 7000), V2G, now=NOW, hold_s=60, car=CarState(False, 5.0))
    assert charge.limit_w == 7000
