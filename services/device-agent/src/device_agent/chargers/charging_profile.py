"""Pure: a scheduler action → the power limit an EV charger gets, and the OCPP charging profile carrying it.

The limit travels as a TxDefaultProfile (1.6 and 2.x) whose ``validTo`` ends the control: a charger whose
central system vanishes drops the profile there and falls back to its own default, the same principle as the
SunSpec revert timer. On/off chargers get 0 or their rated power; V1G 0..rated, where anything under the
minimum current (6 A a phase unless the registry says otherwise) is 0, because a charger cannot regulate
below it; V2G also takes negative limits (discharge) down to -rated, with the same minimum in magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gridloop_common.contracts import BatteryMode, DeviceAction, DeviceType, PowerMode

__all__ = [
    "DEFAULT_V2G_MIN_SOC_PERCENTAGE",
    "CarState",
    "ChargerLimits",
    "ChargingLimitPlan",
    "UnsupportedAction",
    "plan_charging_limit",
    "profile_request_2x",
    "profile_request_16",
]

VOLTAGE_V = 230.0
DEFAULT_MAX_CURRENT_A = 16.0
DEFAULT_MIN_CURRENT_A = 6.0  # IEC 61851: the least current a pilot signal can ask for
DEFAULT_PHASES = 3
DEFAULT_V2G_MIN_SOC_PERCENTAGE = 20.0  # V2G never takes a car below this unless the registry says otherwise


@dataclass(frozen=True)
class CarState:
    """What the charger last said of the car: plugged in or not, its SoC if reported, and the floor for V2G."""

    plugged_in: bool
    soc_percentage: float | None
    min_soc_percentage: float = DEFAULT_V2G_MIN_SOC_PERCENTAGE


@dataclass(frozen=True)
class ChargerLimits:
    """What the registry says a charger can do."""

    device_type: DeviceType
    rated_w: float
    minimum_w: float

    @classmethod
    def of(
        cls, device_type: DeviceType, *, max_power_kw: float | None, phases: int | None, min_current_a: float | None
    ) -> ChargerLimits:
        watts_per_amp = (phases or DEFAULT_PHASES) * VOLTAGE_V
        rated_w = max_power_kw * 1000 if max_power_kw is not None else DEFAULT_MAX_CURRENT_A * watts_per_amp
        return cls(
            device_type=device_type, rated_w=rated_w, minimum_w=(min_current_a or DEFAULT_MIN_CURRENT_A) * watts_per_amp
        )


@dataclass(frozen=True)
class ChargingLimitPlan:
    """The limit to send (W, negative: discharge), until when, and a note when it differs from what was asked."""

    limit_w: float
    valid_to: datetime
    note: str | None = None
    released: bool = False  # no control from gridloop: the profile only restates the charger's own default


class UnsupportedAction(ValueError):
    """An action this charger cannot carry out; the message is the failed outcome's reason."""


def _requested_w(action: DeviceAction, limits: ChargerLimits) -> tuple[float, bool]:
    """(the power asked for, positive into the car; whether it is a release rather than a control)."""
    if action.mode is BatteryMode.STANDBY:
        return 0.0, False
    if action.mode in (BatteryMode.CHARGE, BatteryMode.DISCHARGE):
        if action.power_mode is PowerMode.FOLLOW_LOAD:
            raise UnsupportedAction("FOLLOW_LOAD is not supported for EV chargers")
        wanted = (
            float(action.setpoint_w)
            if action.power_mode is PowerMode.SETPOINT and action.setpoint_w
            else limits.rated_w
        )
        if action.mode is BatteryMode.DISCHARGE:
            if limits.device_type is not DeviceType.ELECTRIC_VEHICLE_V2G:
                raise UnsupportedAction(f"a {limits.device_type} cannot discharge (only electric_vehicle_v2g)")
            return -wanted, False
        return wanted, False
    if action.mode is BatteryMode.BACKUP:
        return limits.rated_w, False  # fill the car
    return limits.rated_w, True  # SELF_CONSUMPTION, SAVINGS: the charger charges as it would by itself


def plan_charging_limit(
    action: DeviceAction, limits: ChargerLimits, *, now: datetime, hold_s: float, car: CarState | None = None
) -> ChargingLimitPlan:
    """The limit for ``action``, valid until its end or ``hold_s`` from ``now``, whichever is first.

    A discharge needs a car plugged in and above its minimum SoC (``car``: None when nothing is known yet,
    the charger's own floor then holds); otherwise the limit is 0. Raises UnsupportedAction for what the
    charger cannot do (discharge without V2G, FOLLOW_LOAD).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    requested_w, released = _requested_w(action, limits)
    valid_to = now + timedelta(seconds=hold_s)
    if action.valid_until is not None:
        valid_to = min(valid_to, action.valid_until)
    if limits.device_type is DeviceType.ON_OFF_EV_CHARGER:
        limit_w = limits.rated_w if requested_w > 0 else 0.0
        note = None if limit_w == requested_w else f"an on/off charger runs at 0 or {limits.rated_w:g} W"
        return ChargingLimitPlan(limit_w=limit_w, valid_to=valid_to, note=note, released=released)
    magnitude = min(abs(requested_w), limits.rated_w)
    note = None
    if magnitude < abs(requested_w):
        note = f"clamped to the rated {limits.rated_w:g} W"
    if 0 < magnitude < limits.minimum_w:
        note = f"{magnitude:g} W is under the minimum current ({limits.minimum_w:g} W): off"
        magnitude = 0.0
    limit_w = magnitude if requested_w >= 0 else -magnitude
    if limit_w < 0 and car is not None:
        if not car.plugged_in:
            limit_w, note = 0.0, "no car plugged in: nothing to discharge"
        elif car.soc_percentage is not None and car.soc_percentage <= car.min_soc_percentage:
            limit_w = 0.0
            note = (
                f"the car's SoC {car.soc_percentage:g} % is at its minimum {car.min_soc_percentage:g} %: no discharge"
            )
    return ChargingLimitPlan(limit_w=limit_w, valid_to=valid_to, note=note, released=released)


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def profile_request_16(plan: ChargingLimitPlan, *, profile_id: int, now: datetime) -> dict[str, Any]:
    """SetChargingProfile.req (1.6) fields: a TxDefaultProfile on every connector (connector 0)."""
    return {
        "connector_id": 0,
        "cs_charging_profiles": {
            "charging_profile_id": profile_id,
            "stack_level": 0,
            "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Absolute",
            "valid_from": _timestamp(now),
            "valid_to": _timestamp(plan.valid_to),
            "charging_schedule": {
                "charging_rate_unit": "W",
                "start_schedule": _timestamp(now),
                "charging_schedule_period": [{"start_period": 0, "limit": round(plan.limit_w, 1)}],
            },
        },
    }


def profile_request_2x(plan: ChargingLimitPlan, *, profile_id: int, now: datetime, version: str) -> dict[str, Any]:
    """SetChargingProfileRequest (2.0.1, 2.1) fields: a TxDefaultProfile on every EVSE (EVSE 0).

    A discharge is a negative limit in 2.0.1 (its only way); 2.1 says it with a CentralSetpoint and a
    dischargeLimit, the limit of charging then being 0.
    """
    period: dict[str, Any] = {"start_period": 0, "limit": round(plan.limit_w, 1)}
    if version == "ocpp2.1" and plan.limit_w < 0:
        period = {
            "start_period": 0,
            "limit": 0.0,
            "discharge_limit": round(plan.limit_w, 1),
            "setpoint": round(plan.limit_w, 1),
            "operation_mode": "CentralSetpoint",
        }
    return {
        "evse_id": 0,
        "charging_profile": {
            "id": profile_id,
            "stack_level": 0,
            "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Absolute",
            "valid_from": _timestamp(now),
            "valid_to": _timestamp(plan.valid_to),
            "charging_schedule": [
                {
                    "id": profile_id,
                    "start_schedule": _timestamp(now),
                    "charging_rate_unit": "W",
                    "charging_schedule_period": [period],
                }
            ],
        },
    }
