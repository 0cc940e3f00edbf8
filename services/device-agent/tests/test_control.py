"""plan_writes and follow_load_setpoint: pure control planning, clamping and revert timers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from device_agent.intent import (
    ControlIntent,
    ControlLimits,
    ControlMode,
    DeviceLimits,
    IntentExpired,
    InvalidIntent,
    WritePlan,
    follow_load_setpoint,
    plan_writes,
    reserve_for,
)
from gridloop_common.contracts import DeviceMetadata, InvalidDeviceMetadata

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
LIMITS = ControlLimits(
    max_charge_w=5000, rate_scale_factor=-2, reserve_scale_factor=-1, soc_pct=60, reserve_pct=10, revert_timeout_s=60
)


def _values(plan: WritePlan) -> dict[str, float]:
    return {write.point: write.value for write in plan.writes}


def test_discharge_setpoint_becomes_a_discharge_rate() -> None:
    plan = plan_writes(ControlIntent(ControlMode.DISCHARGE, setpoint_w=3000), LIMITS, NOW)
    values = _values(plan)
    assert values["OutWRte"] == pytest.approx(60.0)
    assert values["InWRte"] == 0
    assert values["StorCtl_Mod"] == 2
    assert values["InOutWRte_RvrtTms"] == 60
    assert plan.power_w == pytest.approx(-3000)
    assert not plan.clamped
    raw = {write.point: write.registers for write in plan.writes}
    assert raw["OutWRte"] == (6000,)  # 60.00 % with InOutWRte_SF = -2


def test_values_then_timer_then_mode_last() -> None:
    plan = plan_writes(ControlIntent(ControlMode.CHARGE, setpoint_w=1000, backup_reserve_pct=20), LIMITS, NOW)
    assert [write.point for write in plan.writes] == [
        "MinRsvPct",
        "OutWRte",
        "InWRte",
        "InOutWRte_WinTms",
        "InOutWRte_RvrtTms",
        "InOutWRte_RmpTms",
        "ChaGriSet",
        "StorCtl_Mod",
    ]
    # Three function-code-16 writes: reserve, the contiguous rate/timer block, then the mode.
    assert plan.blocks() == [(7, [200]), (12, [0, 2000, 0, 60, 0, 1]), (5, [1])]


def test_setpoint_above_the_device_maximum_is_clamped() -> None:
    plan = plan_writes(ControlIntent(ControlMode.CHARGE, setpoint_w=9000), LIMITS, NOW)
    assert _values(plan)["InWRte"] == pytest.approx(100.0)
    assert plan.power_w == pytest.approx(5000)
    assert [(clamp.requested, clamp.applied) for clamp in plan.clamps] == [(9000, 5000)]
    assert "WChaMax" in plan.clamps[0].reason


def test_registry_limit_below_the_device_maximum_wins() -> None:
    limits = ControlLimits(max_charge_w=5000, rate_scale_factor=-2, max_power_w=4000)
    plan = plan_writes(ControlIntent(ControlMode.DISCHARGE, setpoint_w=4500), limits, NOW)
    assert plan.power_w == pytest.approx(-4000)
    assert _values(plan)["OutWRte"] == pytest.approx(80.0)
    assert "max_power_kw" in plan.clamps[0].reason


def test_discharge_at_the_reserve_is_clamped_to_zero() -> None:
    limits = ControlLimits(max_charge_w=5000, rate_scale_factor=-2, soc_pct=20, reserve_pct=10)
    plan = plan_writes(ControlIntent(ControlMode.DISCHARGE, setpoint_w=2000, backup_reserve_pct=25), limits, NOW)
    assert plan.power_w == 0
    assert _values(plan)["MinRsvPct"] == 25
    assert "reserve" in plan.clamps[0].reason


def test_reserve_out_of_range_is_clamped() -> None:
    plan = plan_writes(ControlIntent(ControlMode.STANDBY, backup_reserve_pct=140), LIMITS, NOW)
    assert _values(plan)["MinRsvPct"] == 100
    assert plan.clamps[0].quantity == "backup_reserve_pct"


def test_standby_holds_zero_under_control() -> None:
    plan = plan_writes(ControlIntent(ControlMode.STANDBY), LIMITS, NOW)
    values = _values(plan)
    assert (values["InWRte"], values["OutWRte"], values["StorCtl_Mod"]) == (0, 0, 3)
    assert plan.revert_timeout_s == 60
    assert plan.power_w == 0


def test_backup_charges_at_the_maximum_and_holds() -> None:
    plan = plan_writes(ControlIntent(ControlMode.BACKUP), LIMITS, NOW)
    values = _values(plan)
    assert values["InWRte"] == pytest.approx(100.0)
    assert values["StorCtl_Mod"] == 1  # charge only: no discharge while holding full


def test_self_consumption_releases_control_without_a_timer() -> None:
    plan = plan_writes(ControlIntent(ControlMode.SELF_CONSUMPTION), LIMITS, NOW)
    values = _values(plan)
    assert values["StorCtl_Mod"] == 0
    assert values["InOutWRte_RvrtTms"] == 0
    assert plan.revert_timeout_s == 0


def test_grid_import_disabled_sets_pv_only_charging() -> None:
    plan = plan_writes(ControlIntent(ControlMode.CHARGE, setpoint_w=2000, enable_grid_import=False), LIMITS, NOW)
    assert _values(plan)["ChaGriSet"] == 0
    assert plan.notes
    allowed = plan_writes(ControlIntent(ControlMode.CHARGE, setpoint_w=2000), LIMITS, NOW)
    assert _values(allowed)["ChaGriSet"] == 1


def test_revert_timer_ends_with_the_intent() -> None:
    intent = ControlIntent(ControlMode.DISCHARGE, setpoint_w=1000, valid_until=NOW + timedelta(seconds=25.2))
    assert plan_writes(intent, LIMITS, NOW).revert_timeout_s == 26


def test_expired_intent_is_never_planned() -> None:
    intent = ControlIntent(ControlMode.DISCHARGE, setpoint_w=1000, valid_until=NOW)
    with pytest.raises(IntentExpired):
        plan_writes(intent, LIMITS, NOW)


@pytest.mark.parametrize(
    "intent",
    [
        ControlIntent(ControlMode.CHARGE),
        ControlIntent(ControlMode.DISCHARGE, setpoint_w=-5),
        ControlIntent(ControlMode.FOLLOW_LOAD),
    ],
)
def test_incomplete_intents_are_rejected(intent: ControlIntent) -> None:
    with pytest.raises(InvalidIntent):
        plan_writes(intent, LIMITS, NOW)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        plan_writes(ControlIntent(ControlMode.STANDBY), LIMITS, datetime(2026, 1, 1))


def test_follow_load_discharges_the_site_load() -> None:
    limits = ControlLimits(max_charge_w=5000, rate_scale_factor=-2, battery_power_w=-1000)
    # The meter sees 800 W import while the battery already gives 1000 W: the load is 1800 W.
    plan = plan_writes(ControlIntent(ControlMode.FOLLOW_LOAD, site_power_w=800), limits, NOW)
    assert plan.power_w == pytest.approx(-1800)
    assert _values(plan)["StorCtl_Mod"] == 2


def test_follow_load_setpoint_never_exports() -> None:
    assert follow_load_setpoint(800, 1000, 5000) == 1800
    assert follow_load_setpoint(-300, 1000, 5000) == 700  # exporting 300 W: back off by 300 W
    assert follow_load_setpoint(-2000, 1000, 5000) == 0
    assert follow_load_setpoint(9000, 0, 5000) == 5000
    assert follow_load_setpoint(500, 0, 5000, target_import_w=50) == 450


def test_device_limits_from_registry_metadata() -> None:
    metadata = DeviceMetadata.from_registry({"capacity_kwh": 13.5, "max_power_kw": 5, "modbus": {"host": "h"}})
    limits = DeviceLimits.from_metadata(metadata)
    assert (limits.max_power_w, limits.capacity_wh) == (5000, 13500)
    assert DeviceLimits.from_metadata(DeviceMetadata.from_registry({})) == DeviceLimits()
    # An invalid limit is refused by the contract (the device is reported, not driven), never read as "none".
    with pytest.raises(InvalidDeviceMetadata, match=r"^metadata\.max_power_kw: "):
        DeviceMetadata.from_registry({"max_power_kw": "five"})


def test_a_command_reserve_records_what_the_device_held_and_the_release_writes_it_back() -> None:
    during = reserve_for(50.0, held_pct=10.0, restore_pct=None, default_pct=None)
    assert (during.write_pct, during.restore_pct) == (50.0, 10.0)
    # A second command with its own reserve keeps the first record: the device's own value, not 50.
    again = reserve_for(30.0, held_pct=50.0, restore_pct=during.restore_pct, default_pct=None)
    assert (again.write_pct, again.restore_pct) == (30.0, 10.0)
    after = reserve_for(None, held_pct=30.0, restore_pct=again.restore_pct, default_pct=None)
    assert (after.write_pct, after.restore_pct) == (10.0, None)


def test_without_a_command_reserve_the_device_reserve_is_left_alone() -> None:
    untouched = reserve_for(None, held_pct=25.0, restore_pct=None, default_pct=None)
    assert (untouched.write_pct, untouched.restore_pct) == (None, None)
    already = reserve_for(None, held_pct=10.0, restore_pct=10.0, default_pct=None)
    assert (already.write_pct, already.restore_pct) == (None, None)


def test_the_registry_default_is_what_a_release_writes_back_even_after_a_restart() -> None:
    recorded = reserve_for(50.0, held_pct=20.0, restore_pct=None, default_pct=15.0)
    assert (recorded.write_pct, recorded.restore_pct) == (50.0, 15.0)
    # A restarted agent recorded nothing, and the device still holds the old command's 50 %.
    restarted = reserve_for(None, held_pct=50.0, restore_pct=None, default_pct=15.0)
    assert (restarted.write_pct, restarted.restore_pct) == (15.0, None)


def test_the_registry_default_reserve_is_read_from_the_metadata() -> None:
    metadata = DeviceMetadata.from_registry({"backup_reserve_percentage": 20})
    assert DeviceLimits.from_metadata(metadata).default_reserve_pct == 20.0
    for invalid in (120, -1, "20", True, float("nan")):
        with pytest.raises(InvalidDeviceMetadata, match=r"^metadata\.backup_reserve_percentage: "):
            DeviceMetadata.from_registry({"backup_reserve_percentage": invalid})
