"""A SunSpec battery on Modbus TCP (models 1, 124, 802, 701) with state-of-charge physics and a revert timer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

from gridloop_simulators.sunspec import (
    BATTERY,
    COMMON,
    DER_AC_MEASUREMENT,
    STORAGE,
    PointType,
    SimulatedSunSpecDevice,
    SunSpecImage,
    scale_factor_for,
)

__all__ = ["BatterySimulator", "ControlWrite", "main"]

logger = logging.getLogger(__name__)

CHARGE_BIT = 1 << 0
DISCHARGE_BIT = 1 << 1
CHARGE_FROM_GRID = 1
NOMINAL_VOLTAGE_V = 400.0  # a high-voltage residential battery stack
CELLS_IN_SERIES = 108
GRID_VOLTAGE_V = 230.0
GRID_FREQUENCY_HZ = 50.0

# ChaSt (124 and 802)
_OFF, _EMPTY, _DISCHARGING, _CHARGING, _FULL, _HOLDING = 1, 2, 3, 4, 5, 6
# Model 124 points whose write restarts the revert countdown.
_CONTROL_POINTS = frozenset(
    {"StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_RvrtTms", "InOutWRte_WinTms", "InOutWRte_RmpTms", "ChaGriSet"}
)


@dataclass(frozen=True)
class ControlWrite:
    """One Modbus write the battery took on its storage controls (model 124), for tests to read back."""

    at: float  # time.monotonic() when the write was stored
    points: dict[str, float]  # engineering value of each point written

    @property
    def releases(self) -> bool:
        """True when the write hands control back to the battery (StorCtl_Mod 0)."""
        return self.points.get("StorCtl_Mod") == 0


class BatterySimulator(SimulatedSunSpecDevice):
    """A simulated SunSpec battery; `async with BatterySimulator(port=0) as sim:` then `sim.step(60)`.

    realtime=False leaves time entirely to `step()`, for deterministic tests.

    Control semantics of model 124 in this simulator (a forced-setpoint reading of the model):
    - StorCtl_Mod bit 0 (charge) set: charge at InWRte % of WChaMax; bit 1 (discharge) set: discharge at
      OutWRte % of WChaMax; both set: the net of the two (both 0 % holds at 0 W); 0: external control
      released, and this battery, having no PV or site meter of its own, idles at 0 W.
    - Negative rates count as 0. Power never exceeds WChaMax (itself at most the nameplate).
    - Discharge stops at the reserve: the higher of 124 MinRsvPct and 802 SoCRsvMin.
    - Charge stops at 100 % (or 802 SoCRsvMax) and needs ChaGriSet = GRID: with PV only there is no PV.
    - Efficiency applies each way: charging stores P*eff, discharging draws P/eff from the cells.
    - Revert timer: while InOutWRte_RvrtTms is non-zero, any write to a model 124 control register
      restarts a countdown of that many seconds; at zero the battery sets InWRte = OutWRte = 0 and
      StorCtl_Mod = 0 by itself, so a dead controller leaves it safe.

    Signs follow gridloop (docs/design.md §5): 701 W and 802 W are positive while charging.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 5020,
        unit_id: int = 1,
        capacity_wh: float = 13_500.0,
        max_power_w: float = 5_000.0,
        initial_soc_pct: float = 60.0,
        reserve_pct: float = 10.0,
        efficiency: float = 0.95,
        tick_s: float = 1.0,
        realtime: bool = True,
        base_address: int = 40000,
        serial_number: str = "SIM-BAT-0001",
    ) -> None:
        if capacity_wh <= 0 or max_power_w <= 0:
            raise ValueError("capacity_wh and max_power_w must be positive")
        if not 0 <= initial_soc_pct <= 100 or not 0 <= reserve_pct <= 100:
            raise ValueError("percentages must be within 0..100")
        if not 0 < efficiency <= 1:
            raise ValueError("efficiency must be in (0, 1]")
        super().__init__(
            image=SunSpecImage(base_address, [COMMON, STORAGE, BATTERY, DER_AC_MEASUREMENT]),
            host=host,
            port=port,
            unit_id=unit_id,
            tick_s=tick_s,
            realtime=realtime,
        )
        self.capacity_wh = capacity_wh
        self.max_power_w = max_power_w
        self.efficiency = efficiency
        self.energy_wh = capacity_wh * initial_soc_pct / 100.0
        self.applied_power_w = 0.0
        self.reverted_count = 0
        self.revert_remaining_s: float | None = None
        self.elapsed_s = 0.0
        self.charged_wh = 0.0  # AC energy absorbed from the grid
        self.discharged_wh = 0.0  # AC energy injected into the grid
        self._logged_power_w = 0.0
        self._logged_soc_pct = round(initial_soc_pct)
        # Every write to the storage controls, in order; observers are called with each as it is stored.
        self.control_writes: list[ControlWrite] = []
        self.write_observers: list[Callable[[ControlWrite], None]] = []
        self._initialise(reserve_pct, serial_number)

    @property
    def soc_pct(self) -> float:
        """State of charge in percent of capacity."""
        return self.energy_wh / self.capacity_wh * 100.0

    def value(self, model_id: int, name: str) -> float:
        """A point's engineering value as a client would read it (for tests)."""
        return self.image.get_scaled(model_id, name)

    def raw(self, model_id: int, name: str) -> int | str:
        """A point's raw register value (for tests)."""
        return self.image.get(model_id, name)

    def _initialise(self, reserve_pct: float, serial_number: str) -> None:
        image = self.image
        image.set(1, "Mn", "gridloop")
        image.set(1, "Md", f"SimBattery {self.capacity_wh / 1000:g} kWh")
        image.set(1, "Vr", "1.0.0")
        image.set(1, "SN", serial_number)
        image.set(1, "DA", self.unit_id)

        power_sf = scale_factor_for(self.max_power_w, PointType.UINT16)
        capacity_ah = self.capacity_wh / NOMINAL_VOLTAGE_V
        image.set(124, "WChaMax_SF", power_sf)
        image.set(124, "WChaDisChaGra_SF", 0)
        image.set(124, "VAChaMax_SF", power_sf)
        image.set(124, "MinRsvPct_SF", -1)
        image.set(124, "ChaState_SF", -1)
        image.set(124, "StorAval_SF", scale_factor_for(capacity_ah, PointType.UINT16, resolution=-2))
        image.set(124, "InBatV_SF", -1)
        image.set(124, "InOutWRte_SF", -2)
        image.set_scaled(124, "WChaMax", self.max_power_w)
        image.set(124, "WChaGra", 100)
        image.set(124, "WDisChaGra", 100)
        image.set(124, "StorCtl_Mod", 0)
        image.set_scaled(124, "VAChaMax", self.max_power_w)
        image.set_scaled(124, "MinRsvPct", reserve_pct)
        image.set(124, "OutWRte", 0)
        image.set(124, "InWRte", 0)
        image.set(124, "InOutWRte_WinTms", 0)
        image.set(124, "InOutWRte_RvrtTms", 0)
        image.set(124, "InOutWRte_RmpTms", 0)
        image.set(124, "ChaGriSet", CHARGE_FROM_GRID)

        image.set(802, "AHRtg_SF", scale_factor_for(capacity_ah, PointType.UINT16, resolution=-2))
        image.set(802, "WHRtg_SF", scale_factor_for(self.capacity_wh, PointType.UINT16))
        image.set(802, "WChaDisChaMax_SF", power_sf)
        image.set(802, "SoC_SF", -1)
        image.set(802, "DoD_SF", -1)
        image.set(802, "SoH_SF", -1)
        image.set(802, "V_SF", -1)
        image.set(802, "CellV_SF", -3)
        image.set(802, "A_SF", -1)
        image.set(802, "AMax_SF", -1)
        image.set(802, "W_SF", scale_factor_for(self.max_power_w, PointType.INT16))
        image.set_scaled(802, "AHRtg", capacity_ah)
        image.set_scaled(802, "WHRtg", self.capacity_wh)
        image.set_scaled(802, "WChaRteMax", self.max_power_w)
        image.set_scaled(802, "WDisChaRteMax", self.max_power_w)
        image.set_scaled(802, "SoCMax", 100.0)
        image.set_scaled(802, "SoCMin", 0.0)
        image.set_scaled(802, "SoCRsvMax", 100.0)
        image.set_scaled(802, "SoCRsvMin", 0.0)
        image.set_scaled(802, "SoH", 98.0)
        image.set(802, "Hb", 0)
        image.set(802, "CtrlHb", 0)
        image.set(802, "AlmRst", 0)
        image.set(802, "Typ", 4)  # LITHIUM_ION
        image.set(802, "State", 3)  # CONNECTED
        image.set(802, "Evt1", 0)
        image.set(802, "Evt2", 0)
        image.set(802, "EvtVnd1", 0)
        image.set(802, "EvtVnd2", 0)
        image.set_scaled(802, "AChaMax", self.max_power_w / NOMINAL_VOLTAGE_V)
        image.set_scaled(802, "ADisChaMax", self.max_power_w / NOMINAL_VOLTAGE_V)
        image.set(802, "SetOp", 1)  # CONNECT
        image.set(802, "SetInvState", 3)  # INVERTER_STARTED

        image.set(701, "W_SF", scale_factor_for(self.max_power_w, PointType.INT16))
        image.set(701, "VA_SF", scale_factor_for(self.max_power_w, PointType.INT16))
        image.set(701, "Var_SF", scale_factor_for(self.max_power_w, PointType.INT16))
        image.set(701, "PF_SF", -3)
        image.set(701, "A_SF", -2)
        image.set(701, "V_SF", -1)
        image.set(701, "Hz_SF", -3)
        image.set(701, "TotWh_SF", 0)
        image.set(701, "TotVarh_SF", 0)
        image.set(701, "Tmp_SF", -1)
        image.set(701, "ACType", 1)  # SINGLE_PHASE
        image.set(701, "St", 2)  # ON
        image.set(701, "ConnSt", 2)  # CONNECTED
        image.set(701, "Alrm", 0)
        image.set(701, "DERMode", 0)  # GRID_FOLLOWING
        image.set_scaled(701, "LNV", GRID_VOLTAGE_V)
        image.set_scaled(701, "VL1", GRID_VOLTAGE_V)
        image.set_scaled(701, "Hz", GRID_FREQUENCY_HZ)
        image.set(701, "TotVarhInj", 0)
        image.set(701, "TotVarhAbs", 0)
        image.set_scaled(701, "TmpAmb", 22.0)
        image.set_scaled(701, "TmpCab", 28.0)
        self._refresh()

    # Writes -----------------------------------------------------------------------------------

    def _validate_write(self, address: int, words: list[int]) -> ExcCodes | None:
        refused = super()._validate_write(address, words)
        if refused is not None:
            return refused
        for index, word in enumerate(words):
            found = self.image.locate(address + index)
            if found is None:
                return ExcCodes.ILLEGAL_ADDRESS
            layout, point = found
            value = self.image.scaled_value_of(layout.model_id, point.name, [word])
            if not _acceptable(layout.model_id, point.name, value, self.max_power_w):
                logger.info(
                    "battery refused a write of %g to %s",
                    value,
                    point.name,
                    extra={"point": point.name, "value": value, "model": layout.model_id},
                )
                return ExcCodes.ILLEGAL_VALUE
        return None

    def _after_write(self, address: int, count: int) -> None:
        touched = set()
        for index in range(count):
            found = self.image.locate(address + index)
            if found is not None and found[0].model_id == STORAGE.model_id:
                touched.add(found[1].name)
        if touched:
            write = ControlWrite(
                at=time.monotonic(), points={name: self.image.get_scaled(STORAGE.model_id, name) for name in touched}
            )
            self.control_writes.append(write)
            for observer in self.write_observers:
                observer(write)
        if touched & _CONTROL_POINTS:
            timeout_s = self.image.get_int(124, "InOutWRte_RvrtTms")
            self.revert_remaining_s = float(timeout_s) if timeout_s > 0 else None

    # Physics ----------------------------------------------------------------------------------

    def _advance(self, seconds: float) -> None:
        remaining = self.revert_remaining_s
        if remaining is not None and remaining <= seconds:
            self._integrate(remaining)
            self._revert()
            self._integrate(seconds - remaining)
        else:
            if remaining is not None:
                self.revert_remaining_s = remaining - seconds
            self._integrate(seconds)
        self.elapsed_s += seconds
        self._log_changes()

    def _revert(self) -> None:
        self.image.set(124, "OutWRte", 0)
        self.image.set(124, "InWRte", 0)
        self.image.set(124, "StorCtl_Mod", 0)
        self.revert_remaining_s = None
        self.reverted_count += 1
        self.applied_power_w = 0.0
        logger.info(
            "battery revert timer expired: external control released at soc %.2f %%",
            self.soc_pct,
            extra={"soc_pct": self.soc_pct},
        )

    def requested_power_w(self) -> float:
        """The power the control registers ask for now (positive = charging), before energy limits."""
        image = self.image
        mode = image.get_int(124, "StorCtl_Mod")
        ceiling_w = min(image.get_scaled(124, "WChaMax"), self.max_power_w)
        charge_w = 0.0
        discharge_w = 0.0
        if mode & CHARGE_BIT:
            charge_w = min(ceiling_w, max(0.0, image.get_scaled(124, "InWRte")) / 100.0 * ceiling_w)
            if image.get_int(124, "ChaGriSet") != CHARGE_FROM_GRID:
                charge_w = 0.0  # PV only, and this battery has no PV
        if mode & DISCHARGE_BIT:
            discharge_w = min(ceiling_w, max(0.0, image.get_scaled(124, "OutWRte")) / 100.0 * ceiling_w)
        return charge_w - discharge_w

    def reserve_pct(self) -> float:
        """The state of charge below which the battery does not discharge."""
        return max(self.image.get_scaled(124, "MinRsvPct"), self.image.get_scaled(802, "SoCRsvMin"))

    def _integrate(self, seconds: float) -> None:
        if seconds <= 0:
            return
        hours = seconds / 3600.0
        power_w = self.requested_power_w()
        if power_w > 0:
            ceiling_wh = self.capacity_wh * min(100.0, self.image.get_scaled(802, "SoCRsvMax")) / 100.0
            room_wh = max(0.0, ceiling_wh - self.energy_wh)
            power_w = min(power_w, room_wh / (hours * self.efficiency))
            self.energy_wh += power_w * hours * self.efficiency
            self.charged_wh += power_w * hours
        elif power_w < 0:
            floor_wh = self.capacity_wh * self.reserve_pct() / 100.0
            available_wh = max(0.0, self.energy_wh - floor_wh)
            power_w = -min(-power_w, available_wh * self.efficiency / hours)
            self.energy_wh += power_w * hours / self.efficiency
            self.discharged_wh += -power_w * hours
        self.energy_wh = min(max(self.energy_wh, 0.0), self.capacity_wh)
        self.applied_power_w = power_w

    def _log_changes(self) -> None:
        soc_rounded = round(self.soc_pct)
        if abs(self.applied_power_w - self._logged_power_w) >= 1.0 or soc_rounded != self._logged_soc_pct:
            logger.info(
                "battery state: soc %.2f %%, power %.1f W",
                self.soc_pct,
                self.applied_power_w,
                extra={"soc_pct": round(self.soc_pct, 2), "power_w": round(self.applied_power_w, 1)},
            )
            self._logged_power_w = self.applied_power_w
            self._logged_soc_pct = soc_rounded

    def _refresh(self) -> None:
        image = self.image
        soc = self.soc_pct
        power_w = self.applied_power_w
        voltage_v = NOMINAL_VOLTAGE_V * (0.9 + 0.2 * soc / 100.0)
        current_a = power_w / voltage_v
        capacity_ah = self.capacity_wh / NOMINAL_VOLTAGE_V
        status = self._charge_status(soc, power_w)

        image.set_scaled(124, "ChaState", soc)
        image.set_scaled(124, "StorAval", max(0.0, soc - image.get_scaled(124, "MinRsvPct")) / 100.0 * capacity_ah)
        image.set_scaled(124, "InBatV", voltage_v)
        image.set(124, "ChaSt", status)

        image.set_scaled(802, "SoC", soc)
        image.set_scaled(802, "DoD", 100.0 - soc)
        image.set(802, "NCyc", int((self.charged_wh + self.discharged_wh) / (2 * self.capacity_wh)))
        image.set(802, "ChaSt", status)
        image.set(802, "LocRemCtl", 0 if image.get_int(124, "StorCtl_Mod") else 1)  # REMOTE / LOCAL
        image.set(802, "Hb", int(self.elapsed_s) % 0x10000)
        image.set_scaled(802, "V", voltage_v)
        image.set_scaled(802, "VMax", voltage_v)
        image.set_scaled(802, "VMin", voltage_v)
        image.set_scaled(802, "CellVMax", voltage_v / CELLS_IN_SERIES + 0.005)
        image.set_scaled(802, "CellVMin", voltage_v / CELLS_IN_SERIES - 0.005)
        image.set_scaled(802, "CellVAvg", voltage_v / CELLS_IN_SERIES)
        image.set_scaled(802, "A", current_a)
        image.set_scaled(802, "W", power_w)

        image.set(701, "InvSt", 4 if power_w else 8)  # running / STANDBY
        image.set_scaled(701, "W", power_w)
        image.set_scaled(701, "VA", abs(power_w))
        image.set_scaled(701, "Var", 0.0)
        image.set_scaled(701, "PF", 1.0)
        image.set_scaled(701, "A", abs(power_w) / GRID_VOLTAGE_V)
        image.set_scaled(701, "WL1", power_w)
        image.set_scaled(701, "VAL1", abs(power_w))
        image.set_scaled(701, "AL1", abs(power_w) / GRID_VOLTAGE_V)
        image.set(701, "TotWhInj", math.floor(self.discharged_wh))
        image.set(701, "TotWhAbs", math.floor(self.charged_wh))
        image.set(701, "TotWhInjL1", math.floor(self.discharged_wh))
        image.set(701, "TotWhAbsL1", math.floor(self.charged_wh))

    def _charge_status(self, soc: float, power_w: float) -> int:
        if power_w > 0:
            return _CHARGING
        if power_w < 0:
            return _DISCHARGING
        if soc >= 99.95:
            return _FULL
        if soc <= 0.05:
            return _EMPTY
        return _HOLDING


def _acceptable(model_id: int, name: str, value: float, max_power_w: float) -> bool:
    """Range checks a real battery would make before accepting a setting."""
    if model_id == STORAGE.model_id:
        if name in ("WChaMax", "VAChaMax"):
            return 0 <= value <= max_power_w
        if name in ("InWRte", "OutWRte"):
            return -100.0 <= value <= 100.0
        if name == "MinRsvPct":
            return 0 <= value <= 100.0
        if name == "StorCtl_Mod":
            return value in (0, 1, 2, 3)
        if name == "ChaGriSet":
            return value in (0, 1)
    if model_id == BATTERY.model_id and name in ("SoCRsvMin", "SoCRsvMax"):
        return 0 <= value <= 100.0
    return True


async def main(argv: list[str]) -> None:
    """Run a simulated SunSpec battery until cancelled."""
    parser = argparse.ArgumentParser(prog="gridloop sim battery", description="Simulated SunSpec battery")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit id")
    parser.add_argument("--capacity-kwh", type=float, default=13.5)
    parser.add_argument("--max-power-kw", type=float, default=5.0)
    parser.add_argument("--soc", type=float, default=60.0, help="initial state of charge, percent")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds per physics step")
    parser.add_argument(
        "--count", type=int, default=1, help="run a fleet: this many batteries on consecutive ports from --port"
    )
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.count <= 1000:
        parser.error("--count must be from 1 to 1000")
    simulators = [
        BatterySimulator(
            host=arguments.host,
            port=arguments.port + index if arguments.port else 0,
            unit_id=arguments.unit,
            capacity_wh=arguments.capacity_kwh * 1000.0,
            max_power_w=arguments.max_power_kw * 1000.0,
            initial_soc_pct=arguments.soc,
            tick_s=arguments.tick,
            serial_number=f"SIM-BAT-{index + 1:04d}",
        )
        for index in range(arguments.count)
    ]
    # A no-op when the caller (e.g. `gridloop sim`) has configured logging already.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    async with contextlib.AsyncExitStack() as stack:
        for simulator in simulators:
            await stack.enter_async_context(simulator)
            logger.info(
                "battery simulator listening on %s:%d unit %d",
                arguments.host,
                simulator.port,
                arguments.unit,
                extra={"host": arguments.host, "port": simulator.port, "unit_id": arguments.unit},
            )
        await asyncio.Event().wait()
