"""Scheduler actions map onto device control intents: every mode, reserve, grid import, validity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from device_agent.intent import ControlMode, UnsupportedAction, intent_for
from gridloop_common.contracts import BatteryMode, DeviceAction, PowerMode

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _action(**fields: object) -> DeviceAction:
    return DeviceAction.model_validate({"device_name": "battery-1", "issued_at": NOW, **fields})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (BatteryMode.STANDBY, ControlMode.STANDBY),
        (BatteryMode.BACKUP, ControlMode.BACKUP),
        (BatteryMode.SELF_CONSUMPTION, ControlMode.SELF_CONSUMPTION),
        (BatteryMode.SAVINGS, ControlMode.SELF_CONSUMPTION),
    ],
)
def test_modes_without_setpoint(mode: BatteryMode, expected: ControlMode) -> None:
    assert intent_for(_action(mode=mode)).mode == expected


def test_setpoint_reserve_grid_import_and_validity_carry_over() -> None:
    until = NOW + timedelta(hours=1)
    intent = intent_for(
        _action(
            mode=BatteryMode.DISCHARGE,
            power_mode=PowerMode.SETPOINT,
            setpoint_w=3000,
            backup_reserve_percentage=20,
            enable_grid_import=False,
            valid_until=until,
        )
    )
    assert (
        intent.mode,
        intent.setpoint_w,
        intent.backup_reserve_pct,
        intent.enable_grid_import,
        intent.valid_until,
    ) == (
        ControlMode.DISCHARGE,
        3000.0,
        20.0,
        False,
        until,
    )


def test_follow_load_takes_the_measured_site_power() -> None:
    intent = intent_for(_action(mode=BatteryMode.DISCHARGE, power_mode=PowerMode.FOLLOW_LOAD), site_power_w=1800.0)
    assert (intent.mode, intent.site_power_w) == (ControlMode.FOLLOW_LOAD, 1800.0)


def test_follow_load_while_charging_is_refused() -> None:
    with pytest.raises(UnsupportedAction, match="discharge mode"):
        intent_for(_action(mode=BatteryMode.CHARGE, power_mode=PowerMode.FOLLOW_LOAD))
