"""A SunSpec site meter on Modbus TCP (models 1 and 203) following a daily load profile."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from gridloop_simulators.battery import BatterySimulator
from gridloop_simulators.sunspec import (
    COMMON,
    METER_WYE,
    PointType,
    SimulatedSunSpecDevice,
    SunSpecImage,
    scale_factor_for,
)

__all__ = ["DEFAULT_PROFILE_KW", "MeterSimulator", "load_w_at", "main"]

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
# A household's average load in kW for each hour of the day (00:00 .. 23:00): a night base load, a
# morning peak, a daytime plateau and the evening peak.
DEFAULT_PROFILE_KW: tuple[float, ...] = (
    0.35, 0.30, 0.30, 0.30, 0.30, 0.35, 0.60, 1.20, 1.50, 1.00, 0.80, 0.80,
    0.90, 0.80, 0.70, 0.70, 0.90, 1.40, 2.40, 2.80, 2.40, 1.70, 1.00, 0.50,
)  # fmt: skip
PHASE_VOLTAGE_V = 230.0
LINE_VOLTAGE_V = 400.0
FREQUENCY_HZ = 50.0
POWER_FACTOR = 0.98


def load_w_at(
    seconds_of_day: float, profile_kw: Sequence[float] = DEFAULT_PROFILE_KW, variation: float = 0.05
) -> float:
    """Site load in W at a time of day: the profile interpolated between hours, plus a small wobble.

    The wobble is deterministic (two incommensurate sines, at most +-variation of the load), so tests
    can predict every value.
    """
    if len(profile_kw) != 24:
        raise ValueError("a load profile has 24 hourly values")
    hours = (seconds_of_day % SECONDS_PER_DAY) / 3600.0
    hour = int(hours)
    fraction = hours - hour
    base_kw = profile_kw[hour] * (1 - fraction) + profile_kw[(hour + 1) % 24] * fraction
    wobble = 0.6 * math.sin(2 * math.pi * seconds_of_day / 420.0)
    wobble += 0.4 * math.sin(2 * math.pi * seconds_of_day / 97.0)
    return base_kw * 1000.0 * (1.0 + variation * wobble)


class MeterSimulator(SimulatedSunSpecDevice):
    """A simulated site meter; site power = load profile + the coupled battery's power (if any).

    It serves model 203 (wye-connected three-phase meter) rather than 701: 20x are SunSpec's meter
    models and what site meters expose, while 701 describes a DER's own output. W is positive when
    the site imports (docs/design.md §5); phase values split the site power evenly over three phases.

    start_s_of_day sets the simulated clock (seconds after midnight UTC); None starts at the current
    UTC time of day. realtime=False leaves time entirely to `step()`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 5021,
        unit_id: int = 1,
        profile_kw: Sequence[float] = DEFAULT_PROFILE_KW,
        variation: float = 0.05,
        battery: BatterySimulator | None = None,
        start_s_of_day: float | None = None,
        tick_s: float = 1.0,
        realtime: bool = True,
        base_address: int = 40000,
        serial_number: str = "SIM-MTR-0001",
    ) -> None:
        if len(profile_kw) != 24:
            raise ValueError("profile_kw needs 24 hourly values")
        super().__init__(
            image=SunSpecImage(base_address, [COMMON, METER_WYE]),
            host=host,
            port=port,
            unit_id=unit_id,
            tick_s=tick_s,
            realtime=realtime,
        )
        self.profile_kw = tuple(profile_kw)
        self.variation = variation
        self.battery = battery
        if start_s_of_day is None:
            now = datetime.now(UTC)
            start_s_of_day = now.hour * 3600 + now.minute * 60 + now.second
        self.time_of_day_s = float(start_s_of_day) % SECONDS_PER_DAY
        self.imported_wh = 0.0
        self.exported_wh = 0.0
        self._initialise(serial_number)

    @property
    def load_w(self) -> float:
        """The site's own consumption now."""
        return load_w_at(self.time_of_day_s, self.profile_kw, self.variation)

    @property
    def site_power_w(self) -> float:
        """Power at the grid connection: positive = importing (load plus a charging battery)."""
        battery_w = self.battery.applied_power_w if self.battery is not None else 0.0
        return self.load_w + battery_w

    def value(self, name: str) -> float:
        """A model 203 point's engineering value as a client would read it (for tests)."""
        self._refresh()
        return self.image.get_scaled(METER_WYE.model_id, name)

    def _initialise(self, serial_number: str) -> None:
        image = self.image
        image.set(1, "Mn", "gridloop")
        image.set(1, "Md", "SimMeter 3P")
        image.set(1, "Vr", "1.0.0")
        image.set(1, "SN", serial_number)
        image.set(1, "DA", self.unit_id)
        peak_w = max(max(self.profile_kw) * 1000.0 * (1 + self.variation), 1.0)
        if self.battery is not None:
            peak_w += self.battery.max_power_w
        power_sf = scale_factor_for(peak_w, PointType.INT16)
        image.set(203, "A_SF", -2)
        image.set(203, "V_SF", -1)
        image.set(203, "Hz_SF", -2)
        image.set(203, "W_SF", power_sf)
        image.set(203, "VA_SF", power_sf)
        image.set(203, "VAR_SF", power_sf)
        image.set(203, "PF_SF", -2)
        image.set(203, "TotWh_SF", 0)
        image.set(203, "TotVAh_SF", 0)
        image.set(203, "TotVArh_SF", 0)
        image.set(203, "Evt", 0)
        for phase in ("", "phA", "phB", "phC"):
            image.set_scaled(203, f"PhV{phase}", PHASE_VOLTAGE_V)
        for pair in ("", "phAB", "phBC", "phCA"):
            image.set_scaled(203, f"PPV{pair}", LINE_VOLTAGE_V)
        image.set_scaled(203, "Hz", FREQUENCY_HZ)
        self._refresh()

    def _advance(self, seconds: float) -> None:
        power_w = self.site_power_w
        if power_w >= 0:
            self.imported_wh += power_w * seconds / 3600.0
        else:
            self.exported_wh += -power_w * seconds / 3600.0
        self.time_of_day_s = (self.time_of_day_s + seconds) % SECONDS_PER_DAY

    def _refresh(self) -> None:
        image = self.image
        power_w = self.site_power_w
        apparent_va = abs(power_w) / POWER_FACTOR
        reactive_var = math.sqrt(max(0.0, apparent_va**2 - power_w**2))
        for suffix, share in (("", 1.0), ("phA", 1 / 3), ("phB", 1 / 3), ("phC", 1 / 3)):
            image.set_scaled(203, f"W{suffix}", power_w * share)
            image.set_scaled(203, f"VA{suffix}", apparent_va * share)
            image.set_scaled(203, f"VAR{suffix}", reactive_var * share)
            image.set_scaled(203, f"PF{suffix}", POWER_FACTOR)
            # Total current is the sum of the phase currents.
            image.set_scaled(203, f"A{suffix}", apparent_va * share / PHASE_VOLTAGE_V)
        image.set(203, "TotWhImp", math.floor(self.imported_wh))
        image.set(203, "TotWhExp", math.floor(self.exported_wh))
        for phase in ("PhA", "PhB", "PhC"):
            image.set(203, f"TotWhImp{phase}", math.floor(self.imported_wh / 3))
            image.set(203, f"TotWhExp{phase}", math.floor(self.exported_wh / 3))


async def main(argv: list[str]) -> None:
    """Run a simulated site meter until cancelled."""
    parser = argparse.ArgumentParser(prog="gridloop sim meter", description="Simulated SunSpec site meter")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5021)
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit id")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds per step")
    parser.add_argument("--variation", type=float, default=0.05, help="load wobble, fraction of the profile")
    arguments = parser.parse_args(argv)
    simulator = MeterSimulator(
        host=arguments.host,
        port=arguments.port,
        unit_id=arguments.unit,
        tick_s=arguments.tick,
        variation=arguments.variation,
    )
    # A no-op when the caller (e.g. `gridloop sim`) has configured logging already.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    async with simulator:
        logger.info(
            "meter simulator listening on %s:%d",
            arguments.host,
            simulator.port,
            extra={"host": arguments.host, "port": simulator.port},
        )
        await asyncio.Event().wait()
