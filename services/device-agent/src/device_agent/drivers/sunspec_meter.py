"""Reading a SunSpec site meter's total real power (model 203, else 701), positive when importing."""

from __future__ import annotations

from device_agent.modbus.bus import DeviceAddress, ModbusBus, Priority
from device_agent.modbus.errors import InvalidResponse
from device_agent.profiles.sunspec import DER_AC_MEASUREMENT, METER_WYE, SunSpecMap, discover, read_model

__all__ = ["SiteMeter"]


class SiteMeter:
    """One site meter; discovers its models once and then reads W at control priority."""

    def __init__(self, *, bus: ModbusBus, address: DeviceAddress, import_sign: int = 1) -> None:
        self.address = address
        self._bus = bus
        self._import_sign = import_sign
        self._map: SunSpecMap | None = None

    async def site_power_w(self) -> float:
        """Grid power at the site now: positive = importing (docs/design.md §5)."""
        if self._map is None:
            self._map = await discover(self._bus, self.address, priority=Priority.CONTROL)
        location = self._map.find(METER_WYE.model_id) or self._map.find(DER_AC_MEASUREMENT.model_id)
        if location is None:
            raise InvalidResponse(f"{self.address}: no meter model (203 or 701)")
        block = await read_model(self._bus, self.address, location, priority=Priority.CONTROL)
        power = block.value("W")
        if power is None:
            raise InvalidResponse(f"{self.address}: meter W not implemented")
        return power * self._import_sign
