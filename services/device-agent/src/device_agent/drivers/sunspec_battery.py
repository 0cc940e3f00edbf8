"""SunSpecBattery: discovery, typed snapshots and verified, revert-timed control of a SunSpec battery."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime

from device_agent.intent import (
    ControlIntent,
    ControlLimits,
    DeviceLimits,
    WritePlan,
    plan_writes,
    reserve_for,
    revert_timeout_for,
)
from device_agent.modbus.bus import DeviceAddress, ModbusBus, Priority
from device_agent.modbus.errors import DiscoveryError, InvalidResponse, ReadbackMismatch
from device_agent.modbus.registers import encode
from device_agent.profiles.base import ModelBlock
from device_agent.profiles.sunspec import (
    BATTERY,
    CHARGE_FROM_GRID,
    CHARGE_STATUS,
    COMMON,
    DER_AC_MEASUREMENT,
    INVERTER_THREE_PHASE,
    STORAGE,
    STORAGE_CONTROL_CHARGE,
    STORAGE_CONTROL_DISCHARGE,
    SunSpecMap,
    discover,
    read_model,
)
from gridloop_common.clock import Clock, SystemClock

__all__ = ["BatterySnapshot", "DeviceIdentity", "SunSpecBattery"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceIdentity:
    """What discovery found: model 1 identity and the SunSpec model map."""

    manufacturer: str
    model: str
    serial_number: str
    version: str
    sunspec: SunSpecMap


@dataclass(frozen=True)
class BatterySnapshot:
    """One consistent read of the battery's state. Power is positive when charging (docs/design.md §5)."""

    soc_pct: float | None
    soh_pct: float | None
    power_w: float | None
    capacity_wh: float | None
    max_charge_w: float | None  # WChaMax: the 100 % of the charge and discharge rates
    reserve_pct: float | None  # MinRsvPct
    control_mode: int  # StorCtl_Mod bits: 1 = charge limited/controlled, 2 = discharge; 0 = released
    charge_rate_pct: float | None  # InWRte
    discharge_rate_pct: float | None  # OutWRte
    grid_charging_allowed: bool | None  # ChaGriSet == GRID
    charge_status: str | None  # ChaSt name: CHARGING, DISCHARGING, HOLDING, FULL, ...
    revert_timeout_s: int | None  # InOutWRte_RvrtTms as the device holds it (0 = no timer)
    revert_remaining_s: float | None  # estimated from this agent's last control write; None if unknown
    heartbeat: int | None  # model 802 Hb, incremented by the battery every second
    rate_scale_factor: int
    reserve_scale_factor: int

    @property
    def externally_controlled(self) -> bool:
        """True while StorCtl_Mod holds any control bit."""
        return self.control_mode != 0

    @property
    def charge_enabled(self) -> bool:
        """True when the charge bit of StorCtl_Mod is set."""
        return bool(self.control_mode & STORAGE_CONTROL_CHARGE)

    @property
    def discharge_enabled(self) -> bool:
        """True when the discharge bit of StorCtl_Mod is set."""
        return bool(self.control_mode & STORAGE_CONTROL_DISCHARGE)


@dataclass(frozen=True)
class _ActiveControl:
    plan: WritePlan
    written_at: float  # clock() when the revert timer was last (re)started
    revert_timeout_s: int


class SunSpecBattery:
    """A battery speaking SunSpec (models 1, 124, 802 and 701 or 103) over a ModbusBus.

    ac_power_sign converts the AC model's W into gridloop's convention (positive = charging). The
    gridloop simulator reports 701 W that way (+1); a device reporting the DER convention (positive =
    injection into the grid) needs -1.
    """

    def __init__(
        self,
        *,
        bus: ModbusBus,
        address: DeviceAddress,
        revert_timeout_s: int = 60,
        ac_power_sign: int = 1,
        clock: Clock | None = None,
    ) -> None:
        if ac_power_sign not in (1, -1):
            raise ValueError("ac_power_sign must be 1 or -1")
        if not 1 <= revert_timeout_s <= 0xFFFF:
            raise ValueError("revert_timeout_s must be 1..65535")
        self.address = address
        self._bus = bus
        self._revert_timeout_s = revert_timeout_s
        self._ac_power_sign = ac_power_sign
        self._clock: Clock = clock or SystemClock()
        self._map: SunSpecMap | None = None
        self._active: _ActiveControl | None = None
        # MinRsvPct to write back when an intent without a reserve follows one that changed it (reserve_for).
        self._reserve_to_restore: float | None = None

    @property
    def sunspec(self) -> SunSpecMap | None:
        """The model map found by the last discovery, if any."""
        return self._map

    async def discover(self, *, priority: Priority = Priority.POLL) -> DeviceIdentity:
        """Walk the SunSpec chain and check the models a controllable battery needs are present."""
        found = await discover(self._bus, self.address, priority=priority)
        for model_id in (COMMON.model_id, STORAGE.model_id, BATTERY.model_id):
            found.require(model_id)
        if found.find(DER_AC_MEASUREMENT.model_id) is None and found.find(INVERTER_THREE_PHASE.model_id) is None:
            raise DiscoveryError(f"{self.address}: no AC measurement model (701 or 103)")
        common = await read_model(self._bus, self.address, found.require(COMMON.model_id), priority=priority)
        self._map = found
        return DeviceIdentity(
            manufacturer=common.text("Mn"),
            model=common.text("Md"),
            serial_number=common.text("SN"),
            version=common.text("Vr"),
            sunspec=found,
        )

    async def read_snapshot(self, *, priority: Priority = Priority.POLL) -> BatterySnapshot:
        """Read models 124, 802 and the AC model into one snapshot."""
        storage = await self._read(STORAGE.model_id, priority)
        battery = await self._read(BATTERY.model_id, priority)
        sunspec = self._require_map()
        ac_model = DER_AC_MEASUREMENT if sunspec.find(DER_AC_MEASUREMENT.model_id) else INVERTER_THREE_PHASE
        ac = await self._read(ac_model.model_id, priority)

        power_w = ac.value("W")
        if power_w is not None:
            power_w *= self._ac_power_sign
        else:
            power_w = battery.value("W")
        grid = storage.integer("ChaGriSet")
        status = battery.integer("ChaSt") or storage.integer("ChaSt")
        return BatterySnapshot(
            soc_pct=battery.value("SoC") if battery.value("SoC") is not None else storage.value("ChaState"),
            soh_pct=battery.value("SoH"),
            power_w=power_w,
            capacity_wh=battery.value("WHRtg"),
            max_charge_w=storage.value("WChaMax"),
            reserve_pct=storage.value("MinRsvPct"),
            control_mode=storage.integer("StorCtl_Mod") or 0,
            charge_rate_pct=storage.value("InWRte"),
            discharge_rate_pct=storage.value("OutWRte"),
            grid_charging_allowed=None if grid is None else grid == CHARGE_FROM_GRID,
            charge_status=None if status is None else CHARGE_STATUS.get(status, str(status)),
            revert_timeout_s=storage.integer("InOutWRte_RvrtTms"),
            revert_remaining_s=self._revert_remaining_s(),
            heartbeat=battery.integer("Hb"),
            rate_scale_factor=storage.integer("InOutWRte_SF") or 0,
            reserve_scale_factor=storage.integer("MinRsvPct_SF") or 0,
        )

    async def apply(
        self, intent: ControlIntent, limits: DeviceLimits | None = None, *, now: datetime | None = None
    ) -> WritePlan:
        """Plan, write and read back the model 124 registers for an intent; return the plan.

        Raises IntentExpired/InvalidIntent (nothing written), ReadbackMismatch when the device did not
        take a value, and DeviceUnavailable/InvalidResponse on communication failures.
        """
        moment = now or self._clock.now()
        snapshot = await self.read_snapshot(priority=Priority.CONTROL)
        if snapshot.max_charge_w is None:
            raise InvalidResponse(f"{self.address}: WChaMax is not implemented; cannot scale rates")
        registry = limits or DeviceLimits()
        control_limits = ControlLimits(
            max_charge_w=snapshot.max_charge_w,
            rate_scale_factor=snapshot.rate_scale_factor,
            reserve_scale_factor=snapshot.reserve_scale_factor,
            max_power_w=registry.max_power_w,
            soc_pct=snapshot.soc_pct,
            reserve_pct=snapshot.reserve_pct,
            battery_power_w=snapshot.power_w or 0.0,
            revert_timeout_s=self._revert_timeout_s,
        )
        reserve = reserve_for(
            intent.backup_reserve_pct,
            held_pct=snapshot.reserve_pct,
            restore_pct=self._reserve_to_restore,
            default_pct=registry.default_reserve_pct,
        )
        if reserve.write_pct != intent.backup_reserve_pct:
            # No reserve asked for, and the device still holds a command's: the plan writes it back.
            intent = dataclasses.replace(intent, backup_reserve_pct=reserve.write_pct)
        plan = plan_writes(intent, control_limits, moment)
        if reserve.restore_pct is not None:
            # Recorded before writing: a write that fails half-way may already have changed MinRsvPct.
            self._reserve_to_restore = reserve.restore_pct
        storage_address = self._require_map().require(STORAGE.model_id).address
        point_at = {write.offset + index: write.point for write in plan.writes for index in range(len(write.registers))}
        for offset, registers in plan.blocks():
            names = [point_at[offset + index] for index in range(len(registers))]
            await self._write_verified(storage_address + offset, registers, names)
        self._active = (
            None if plan.revert_timeout_s == 0 else _ActiveControl(plan, self._clock.monotonic(), plan.revert_timeout_s)
        )
        self._reserve_to_restore = reserve.restore_pct
        logger.info(
            "battery control applied",
            extra={
                "device": str(self.address),
                "mode": str(intent.mode),
                "power_w": plan.power_w,
                "revert_timeout_s": plan.revert_timeout_s,
                "reserve_pct": reserve.write_pct,
                "clamps": [clamp.reason for clamp in plan.clamps],
            },
        )
        return plan

    async def refresh_revert_timer(self, *, now: datetime | None = None) -> bool:
        """Rewrite InOutWRte_RvrtTms so the device restarts its countdown; False when nothing to refresh.

        Nothing is refreshed when no control is active or the intent's validity has ended: then the
        device is left to revert on its own.
        """
        active = self._active
        if active is None:
            return False
        moment = now or self._clock.now()
        valid_until = active.plan.intent.valid_until
        if valid_until is not None and moment >= valid_until:
            self._active = None
            return False
        timeout_s = revert_timeout_for(self._revert_timeout_s, valid_until, moment)
        point = STORAGE.point("InOutWRte_RvrtTms")
        address = self._require_map().require(STORAGE.model_id).address + point.offset
        await self._write_verified(address, encode(point.type, timeout_s), [point.name])
        self._active = _ActiveControl(active.plan, self._clock.monotonic(), timeout_s)
        return True

    async def keep_alive(self, *, now: datetime | None = None) -> bool:
        """The driver interface's name for refreshing the revert timer."""
        return await self.refresh_revert_timer(now=now)

    async def _write_verified(self, start: int, registers: list[int], names: list[str]) -> None:
        await self._bus.write_registers(self.address, start, registers, priority=Priority.CONTROL)
        read_back = await self._bus.read_holding_registers(
            self.address, start, len(registers), priority=Priority.CONTROL
        )
        for index, (written, found) in enumerate(zip(registers, read_back, strict=True)):
            if written != found:
                raise ReadbackMismatch(f"{self.address} {names[index]}", written=written, read_back=found)

    async def _read(self, model_id: int, priority: Priority) -> ModelBlock:
        if self._map is None:
            await self.discover(priority=priority)
        sunspec = self._require_map()
        try:
            return await read_model(self._bus, self.address, sunspec.require(model_id), priority=priority)
        except InvalidResponse:
            # The register map moved (firmware update, another device on the address): rediscover next time.
            self._map = None
            raise

    def _require_map(self) -> SunSpecMap:
        if self._map is None:
            raise DiscoveryError(f"{self.address}: not discovered")
        return self._map

    def _revert_remaining_s(self) -> float | None:
        if self._active is None:
            return None
        return max(0.0, self._active.written_at + self._active.revert_timeout_s - self._clock.monotonic())
