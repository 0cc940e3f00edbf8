"""The pure lifecycle decisions: versions, acceptance, overlap resolution, default actions, backoff."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from gridloop_common.contracts import BatteryMode, Command
from scheduler import planning

from .builders import NOW
from .builders import command as _command
from .builders import device as _device


def test_versions_are_judged_by_updated_at() -> None:
    assert planning.judge_version(stored_updated_at=None, received_updated_at=NOW) == "new"
    assert planning.judge_version(stored_updated_at=NOW, received_updated_at=NOW) == "same"
    assert planning.judge_version(stored_updated_at=NOW, received_updated_at=NOW + timedelta(seconds=1)) == "newer"
    assert planning.judge_version(stored_updated_at=NOW, received_updated_at=NOW - timedelta(seconds=1)) == "stale"


@pytest.mark.parametrize(
    ("device", "command", "reason"),
    [
        (None, _command(), "unknown device 'battery-1'"),
        (_device(active=False), _command(), "deactivated"),
        (_device(device_type="meter"), _command(), "unsupported mode DISCHARGE"),
        (_device(online=False, offline_reason="connection refused"), _command(), "offline: connection refused"),
        (_device(), _command(battery={"setpoint_w": 8000}), "setpoint 8000 W is beyond the device's limit of 5000 W"),
        (
            _device(metadata={"max_power_kw": 5}),
            _command(battery={"power_mode": "FOLLOW_LOAD", "setpoint_w": None}),
            "unsupported mode FOLLOW_LOAD",
        ),
        (
            _device(),
            _command(starts_at=(NOW - timedelta(hours=2)).isoformat(), ends_at=(NOW - timedelta(hours=1)).isoformat()),
            "already ended",
        ),
    ],
)
def test_refusals_carry_an_actionable_reason(
    device: planning.DeviceFacts | None, command: Command, reason: str
) -> None:
    decision = planning.decide(command, device, now=NOW)
    assert not decision.accepted
    assert decision.reason is not None and reason in decision.reason


def test_an_old_offline_report_does_not_refuse() -> None:
    stale_report = _device(online=False, observed_at=NOW - timedelta(minutes=30))
    assert planning.decide(_command(), stale_report, now=NOW).accepted


def test_a_late_command_is_accepted_for_the_rest_of_its_window() -> None:
    late = _command(starts_at=(NOW - timedelta(minutes=30)).isoformat())
    assert planning.decide(late, _device(), now=NOW).accepted


def _active(command: Command) -> planning.ActiveCommand:
    return planning.ActiveCommand(command.id, command.created_at, command.starts_at, command.ends_at, command)


def test_overlaps_resolve_to_the_most_recently_created() -> None:
    older = _command(starts_at=NOW.isoformat(), created_at=(NOW - timedelta(hours=1)).isoformat())
    newer = _command(
        starts_at=(NOW + timedelta(minutes=5)).isoformat(),
        created_at=(NOW - timedelta(minutes=1)).isoformat(),
        battery={"mode": "CHARGE", "setpoint_w": 1000},
    )
    candidates = [_active(older), _active(newer)]
    early, late = (planning.winner(candidates, now=NOW + timedelta(minutes=m)) for m in (1, 6))
    assert early is not None and early.command_id == older.id
    assert late is not None and late.command_id == newer.id
    assert planning.winner(candidates, now=NOW + timedelta(hours=2)) is None


def test_no_end_runs_until_replaced() -> None:
    endless = _command(starts_at=NOW.isoformat(), ends_at=None, duration_s=None)
    assert planning.winner([_active(endless)], now=NOW + timedelta(days=30)) is not None


def test_action_for_winner_and_default() -> None:
    command = _command(starts_at=NOW.isoformat())
    action_id = uuid.uuid4()
    action = planning.action_for("battery-1", _active(command), now=NOW, action_id=action_id)
    assert (action.mode, action.setpoint_w, action.command_id) == (BatteryMode.DISCHARGE, 3000, command.id)
    # Valid a grace past the end: the action that follows replaces it before the device can release itself.
    assert command.ends_at is not None and action.valid_until == command.ends_at + planning.END_GRACE
    default = planning.action_for("battery-1", None, now=NOW, action_id=action_id)
    assert (default.mode, default.command_id, default.setpoint_w) == (BatteryMode.SELF_CONSUMPTION, None, None)


def test_a_cancellation_is_known_released_once_the_longest_revert_timer_has_run_out() -> None:
    known = planning.release_known_by(NOW, revert_timeout_s=60)
    assert known == NOW + timedelta(seconds=60) + planning.RELEASE_MARGIN
    assert planning.release_known_by(NOW, revert_timeout_s=10) < known


def test_ack_backoff_grows_and_is_capped() -> None:
    delays = [planning.ack_retry_delay_s(attempt) for attempt in range(1, 10)]
    assert delays[:4] == [1, 2, 4, 8]
    assert max(delays) == planning.ACK_BACKOFF_CAP_S
    assert delays == sorted(delays)


@pytest.mark.parametrize("device_type", ["bess", "on_off_ev_charger", "electric_vehicle_v1g", "electric_vehicle_v2g"])
def test_batteries_and_the_three_ev_charger_types_can_be_planned(device_type: str) -> None:
    device = _device(name="ev-1", device_type=device_type, metadata={"max_power_kw": 11, "min_current_a": 6})
    assert planning.device_refusal("ev-1", device) is None


@pytest.mark.parametrize(
    ("device_type", "discharges", "reason"),
    [
        ("meter", False, "only batteries and EV chargers are planned"),
        ("water_heater", False, "only batteries and EV chargers are planned"),
        ("electric_vehicle_v1g", True, "it cannot discharge, and the plan has a negative step"),
        ("on_off_ev_charger", True, "it cannot discharge, and the plan has a negative step"),
    ],
)
def test_a_plan_a_device_cannot_carry_out_is_refused_with_the_reason(
    device_type: str, discharges: bool, reason: str
) -> None:
    refusal = planning.device_refusal("ev-1", _device(name="ev-1", device_type=device_type), discharges=discharges)
    assert refusal is not None and reason in refusal


def test_only_a_v2g_charger_or_a_battery_is_planned_with_discharging_steps() -> None:
    for device_type in ("bess", "electric_vehicle_v2g"):
        assert planning.device_refusal("ev-1", _device(name="ev-1", device_type=device_type), discharges=True) is None
