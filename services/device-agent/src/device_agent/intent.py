"""Control intents, pure (no I/O): a scheduler action → a control intent → bounded SunSpec model 124 writes."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime

from device_agent.modbus.registers import encode, to_raw
from device_agent.profiles.sunspec import (
    CHARGE_FROM_GRID,
    CHARGE_FROM_PV,
    STORAGE,
    STORAGE_CONTROL_CHARGE,
    STORAGE_CONTROL_DISCHARGE,
)
from gridloop_common.contracts import BatteryMode, DeviceAction, DeviceMetadata, PowerMode

__all__ = [
    "Clamp",
    "ControlIntent",
    "ControlLimits",
    "ControlMode",
    "DeviceLimits",
    "IntentExpired",
    "InvalidIntent",
    "RegisterWrite",
    "ReserveChoice",
    "UnsupportedAction",
    "WritePlan",
    "follow_load_setpoint",
    "intent_for",
    "plan_writes",
    "reserve_for",
    "revert_timeout_for",
]

_MAX_REVERT_S = 0xFFFF  # InOutWRte_RvrtTms is a uint16 of seconds


class ControlMode(enum.StrEnum):
    """What the battery should do (docs/design.md §3 modes; FOLLOW_LOAD is DISCHARGE with power_mode FOLLOW_LOAD)."""

    CHARGE = "CHARGE"
    DISCHARGE = "DISCHARGE"
    STANDBY = "STANDBY"
    BACKUP = "BACKUP"
    SELF_CONSUMPTION = "SELF_CONSUMPTION"
    FOLLOW_LOAD = "FOLLOW_LOAD"


@dataclass(frozen=True)
class ControlIntent:
    """One battery control request, independent of the upstream message format.

    setpoint_w is always positive (direction comes from mode). site_power_w is the measured site grid
    power for FOLLOW_LOAD, positive when importing. valid_until (UTC-aware) bounds the revert timer
    so a device whose agent died still stops when the command would have ended.
    """

    mode: ControlMode
    setpoint_w: float | None = None
    enable_grid_import: bool | None = None
    backup_reserve_pct: float | None = None
    site_power_w: float | None = None
    valid_until: datetime | None = None


@dataclass(frozen=True)
class DeviceLimits:
    """Limits recorded for the device in the registry (flux.mg_device_registry.metadata)."""

    max_power_w: float | None = None
    capacity_wh: float | None = None
    # The device's own MinRsvPct, put back when a command that changed it ends (metadata
    # `backup_reserve_percentage`); None: put back what the device held before the command.
    default_reserve_pct: float | None = None

    @classmethod
    def from_metadata(cls, metadata: DeviceMetadata) -> DeviceLimits:
        """`max_power_kw`, `capacity_kwh` (docs/design.md §4) and `backup_reserve_percentage` of metadata the
        contract accepted.

        Absent values are None; invalid ones never get here (the registry read reports the device instead).
        """
        return cls(
            max_power_w=metadata.max_power_w,
            capacity_wh=metadata.capacity_wh,
            default_reserve_pct=metadata.backup_reserve_percentage,
        )


@dataclass(frozen=True)
class ControlLimits:
    """Everything that bounds a control right now: registry limits plus what the device reports."""

    max_charge_w: float  # WChaMax: the 100 % of InWRte and OutWRte
    rate_scale_factor: int = 0  # InOutWRte_SF
    reserve_scale_factor: int = 0  # MinRsvPct_SF
    max_power_w: float | None = None  # registry limit; the lower of this and WChaMax wins
    soc_pct: float | None = None
    reserve_pct: float | None = None  # MinRsvPct the device holds now
    battery_power_w: float = 0.0  # positive = charging
    revert_timeout_s: int = 60


@dataclass(frozen=True)
class RegisterWrite:
    """One model 124 point to write: its engineering value and the registers that encode it."""

    point: str
    offset: int  # from the model's ID register
    value: float
    registers: tuple[int, ...]


@dataclass(frozen=True)
class Clamp:
    """A requested quantity the plan did not pass through, and why."""

    quantity: str
    requested: float
    applied: float
    reason: str


@dataclass(frozen=True)
class WritePlan:
    """The writes for one intent, in order (values, then timer, then the mode that enables them)."""

    intent: ControlIntent
    writes: tuple[RegisterWrite, ...]
    power_w: float  # the power the battery is asked for: positive = charging, negative = discharging
    revert_timeout_s: int  # 0 = no revert timer (external control released)
    clamps: tuple[Clamp, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def clamped(self) -> bool:
        """True when some requested quantity was limited."""
        return bool(self.clamps)

    def blocks(self) -> list[tuple[int, list[int]]]:
        """(offset, registers) per function-code-16 write: consecutive adjacent writes are merged."""
        merged: list[tuple[int, list[int]]] = []
        for write in self.writes:
            if merged and merged[-1][0] + len(merged[-1][1]) == write.offset:
                merged[-1][1].extend(write.registers)
            else:
                merged.append((write.offset, list(write.registers)))
        return merged


class InvalidIntent(ValueError):
    """The intent cannot be turned into writes (missing setpoint, no site measurement, ...)."""


class IntentExpired(InvalidIntent):
    """The intent's validity ended before it could be written; it must never reach the device."""


def follow_load_setpoint(
    site_import_w: float, current_discharge_w: float, max_w: float, *, target_import_w: float = 0.0
) -> float:
    """Discharge power that covers the site's load without exporting, for the 1 s closed loop.

    The site meter sees load minus what the battery already discharges, so the load is
    site_import_w + current_discharge_w. The result is that load less target_import_w, within
    [0, max_w]: never more than the site consumes, so the battery never exports.
    """
    load_w = site_import_w + max(0.0, current_discharge_w)
    return min(max(0.0, load_w - target_import_w), max(0.0, max_w))


def revert_timeout_for(limits_timeout_s: int, valid_until: datetime | None, now: datetime) -> int:
    """The revert timer to write: the configured one, shortened to end with the intent's validity."""
    timeout = limits_timeout_s
    if valid_until is not None:
        timeout = min(timeout, math.ceil((valid_until - now).total_seconds()))
    return max(1, min(_MAX_REVERT_S, timeout))


@dataclass(frozen=True)
class ReserveChoice:
    """The MinRsvPct an intent writes, and the reserve to put back once an intent without one follows."""

    write_pct: float | None  # None: leave MinRsvPct as the device holds it
    restore_pct: float | None  # None: nothing of ours to undo


def reserve_for(
    requested_pct: float | None, *, held_pct: float | None, restore_pct: float | None, default_pct: float | None
) -> ReserveChoice:
    """The reserve to write for an intent, undoing a command's reserve once a command without one follows.

    requested_pct is the intent's backup reserve, held_pct the device's MinRsvPct now, restore_pct what an
    earlier intent recorded to put back, default_pct the registry's. The first intent that changes the
    reserve records the registry default, or else what the device held before it; the next intent without a
    reserve (the release at a command's end, a command that sets none) writes that back. With nothing
    recorded (the agent restarted while a command held the device) the registry default is written back
    wherever the device differs from it.
    """
    if requested_pct is not None:
        if restore_pct is None:
            restore_pct = default_pct if default_pct is not None else held_pct
        return ReserveChoice(write_pct=requested_pct, restore_pct=restore_pct)
    target_pct = restore_pct if restore_pct is not None else default_pct
    if target_pct is None or (held_pct is not None and math.isclose(target_pct, held_pct, abs_tol=1e-9)):
        return ReserveChoice(write_pct=None, restore_pct=None)
    return ReserveChoice(write_pct=target_pct, restore_pct=None)


def plan_writes(intent: ControlIntent, limits: ControlLimits, now: datetime) -> WritePlan:
    """Turn an intent into model 124 writes, clamped to the device's limits and reserve.

    Raises IntentExpired when `now` is past intent.valid_until and InvalidIntent when the intent is
    incomplete (CHARGE/DISCHARGE without a setpoint, FOLLOW_LOAD without a site measurement).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if intent.valid_until is not None and now >= intent.valid_until:
        raise IntentExpired(f"intent was valid until {intent.valid_until.isoformat()}")
    if limits.max_charge_w <= 0:
        raise InvalidIntent("device reports no charge/discharge capability (WChaMax is 0)")

    clamps: list[Clamp] = []
    notes: list[str] = []
    writes: list[RegisterWrite] = []

    cap_w = limits.max_charge_w
    cap_reason = "device maximum WChaMax"
    if limits.max_power_w is not None and limits.max_power_w < cap_w:
        cap_w = limits.max_power_w
        cap_reason = "registry max_power_kw"

    reserve_pct = limits.reserve_pct
    if intent.backup_reserve_pct is not None:
        reserve_pct = _bounded(intent.backup_reserve_pct, 0.0, 100.0, "backup_reserve_pct", "0..100 %", clamps)
        writes.append(_write("MinRsvPct", reserve_pct, limits.reserve_scale_factor))

    charge_w = 0.0
    discharge_w = 0.0
    mode = intent.mode
    if mode is ControlMode.CHARGE:
        charge_w = _capped(_required_setpoint(intent), cap_w, cap_reason, "charge_w", clamps)
        control = STORAGE_CONTROL_CHARGE
        if limits.soc_pct is not None and limits.soc_pct >= 100.0:
            notes.append("battery is full: it holds until it can charge again")
    elif mode is ControlMode.BACKUP:
        charge_w = cap_w
        control = STORAGE_CONTROL_CHARGE
    elif mode in (ControlMode.DISCHARGE, ControlMode.FOLLOW_LOAD):
        if mode is ControlMode.FOLLOW_LOAD:
            if intent.site_power_w is None:
                raise InvalidIntent("FOLLOW_LOAD needs the measured site power (site_power_w)")
            load_w = follow_load_setpoint(intent.site_power_w, -limits.battery_power_w, math.inf)
            if intent.setpoint_w is not None:
                # An explicit setpoint with FOLLOW_LOAD caps what the loop may discharge.
                load_w = min(load_w, _required_setpoint(intent))
            requested_w = _capped(load_w, cap_w, cap_reason, "discharge_w", clamps)
        else:
            requested_w = _capped(_required_setpoint(intent), cap_w, cap_reason, "discharge_w", clamps)
        discharge_w = requested_w
        control = STORAGE_CONTROL_DISCHARGE
        if limits.soc_pct is not None and reserve_pct is not None and limits.soc_pct <= reserve_pct:
            clamps.append(
                Clamp(
                    "discharge_w",
                    requested_w,
                    0.0,
                    f"state of charge {limits.soc_pct:g} % is at or below the reserve {reserve_pct:g} %",
                )
            )
            discharge_w = 0.0
    elif mode is ControlMode.STANDBY:
        control = STORAGE_CONTROL_CHARGE | STORAGE_CONTROL_DISCHARGE
    elif mode is ControlMode.SELF_CONSUMPTION:
        control = 0
    else:  # pragma: no cover - exhaustive over ControlMode
        raise InvalidIntent(f"unsupported mode {mode}")

    if charge_w > 0 and intent.enable_grid_import is False:
        notes.append("grid import disabled: the battery may charge from PV only")

    # Rates are percentages of WChaMax in the device's resolution; report what the device will do.
    out_raw = to_raw(discharge_w / limits.max_charge_w * 100.0, limits.rate_scale_factor)
    if mode is ControlMode.FOLLOW_LOAD:
        # Round down: rounding up by one step of resolution would export.
        out_raw = math.floor(discharge_w / limits.max_charge_w * 100.0 / 10.0**limits.rate_scale_factor)
    in_raw = to_raw(charge_w / limits.max_charge_w * 100.0, limits.rate_scale_factor)
    rate_unit = 10.0**limits.rate_scale_factor
    power_w = (in_raw - out_raw) * rate_unit / 100.0 * limits.max_charge_w

    # Releasing control needs no timer: the device is already in its own default mode.
    revert_s = 0 if control == 0 else revert_timeout_for(limits.revert_timeout_s, intent.valid_until, now)
    grid = CHARGE_FROM_PV if intent.enable_grid_import is False else CHARGE_FROM_GRID
    writes.extend(
        [
            _raw_write("OutWRte", out_raw, out_raw * rate_unit),
            _raw_write("InWRte", in_raw, in_raw * rate_unit),
            _raw_write("InOutWRte_WinTms", 0, 0.0),  # dispatch is already coordinated; no random delay
            _raw_write("InOutWRte_RvrtTms", revert_s, float(revert_s)),
            _raw_write("InOutWRte_RmpTms", 0, 0.0),  # ramping is left to WChaGra / WDisChaGra
            _raw_write("ChaGriSet", grid, float(grid)),
            # The mode goes last: it enables what the writes before it configured.
            _raw_write("StorCtl_Mod", control, float(control)),
        ]
    )
    return WritePlan(
        intent=intent,
        writes=tuple(writes),
        power_w=power_w,
        revert_timeout_s=revert_s,
        clamps=tuple(clamps),
        notes=tuple(notes),
    )


def _required_setpoint(intent: ControlIntent) -> float:
    if intent.setpoint_w is None:
        raise InvalidIntent(f"{intent.mode} needs setpoint_w")
    if intent.setpoint_w < 0 or not math.isfinite(intent.setpoint_w):
        raise InvalidIntent(f"setpoint_w must be a positive number of watts, got {intent.setpoint_w}")
    return float(intent.setpoint_w)


def _capped(requested_w: float, cap_w: float, reason: str, quantity: str, clamps: list[Clamp]) -> float:
    if requested_w > cap_w:
        clamps.append(Clamp(quantity, requested_w, cap_w, f"above the {reason} of {cap_w:g} W"))
        return cap_w
    return requested_w


def _bounded(value: float, low: float, high: float, quantity: str, span: str, clamps: list[Clamp]) -> float:
    bounded = min(max(value, low), high)
    if bounded != value:
        clamps.append(Clamp(quantity, value, bounded, f"outside {span}"))
    return bounded


def _write(name: str, value: float, scale_factor: int) -> RegisterWrite:
    raw = to_raw(value, scale_factor)
    return _raw_write(name, raw, raw * 10.0**scale_factor)


def _raw_write(name: str, raw: int, value: float) -> RegisterWrite:
    definition = STORAGE.point(name)
    return RegisterWrite(name, definition.offset, value, tuple(encode(definition.type, raw)))


class UnsupportedAction(Exception):
    """The action cannot be expressed on this device."""


def intent_for(action: DeviceAction, *, site_power_w: float | None = None) -> ControlIntent:
    """Map a scheduler action onto the device-level control intent."""
    reserve = float(action.backup_reserve_percentage) if action.backup_reserve_percentage is not None else None
    if action.power_mode == PowerMode.FOLLOW_LOAD:
        if action.mode != BatteryMode.DISCHARGE:
            raise UnsupportedAction("FOLLOW_LOAD is a discharge mode; it cannot be combined with CHARGE")
        return ControlIntent(
            mode=ControlMode.FOLLOW_LOAD,
            site_power_w=site_power_w,
            enable_grid_import=action.enable_grid_import,
            backup_reserve_pct=reserve,
            valid_until=action.valid_until,
        )
    mode = {
        BatteryMode.CHARGE: ControlMode.CHARGE,
        BatteryMode.DISCHARGE: ControlMode.DISCHARGE,
        BatteryMode.STANDBY: ControlMode.STANDBY,
        BatteryMode.BACKUP: ControlMode.BACKUP,
        BatteryMode.SELF_CONSUMPTION: ControlMode.SELF_CONSUMPTION,
        # Without a tariff plan from the optimizer, SAVINGS behaves as self-consumption (the safe default).
        BatteryMode.SAVINGS: ControlMode.SELF_CONSUMPTION,
    }[action.mode]
    return ControlIntent(
        mode=mode,
        setpoint_w=float(action.setpoint_w) if action.setpoint_w is not None else None,
        enable_grid_import=action.enable_grid_import,
        backup_reserve_pct=reserve,
        valid_until=action.valid_until,
    )
