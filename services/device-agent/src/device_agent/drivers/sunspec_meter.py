"""SunSpecMeter: the read-only driver of a SunSpec meter (model 203, else the DER AC model 701)."""

from __future__ import annotations

from dataclasses import dataclass

from device_agent.modbus.bus import DeviceAddress, ModbusBus, Priority
from device_agent.modbus.errors import InvalidResponse
from device_agent.profiles.base import ModelBlock
from device_agent.profiles.sunspec import COMMON, DER_AC_MEASUREMENT, METER_WYE, SunSpecMap, discover, read_model

__all__ = ["MeterIdentity", "MeterSnapshot", "SunSpecMeter", "site_power_w"]


@dataclass(frozen=True)
class MeterIdentity:
    """What discovery found: model 1 identity (empty when the meter has none) and the SunSpec model map."""

    model: str
    serial_number: str
    sunspec: SunSpecMap


@dataclass(frozen=True)
class MeterSnapshot:
    """One read of the meter's measurement model (203 when present, else 701) and the map it came from."""

    sunspec: SunSpecMap
    block: ModelBlock


def site_power_w(snapshot: MeterSnapshot, *, import_sign: int = 1) -> float:
    """Grid power at the site: positive = importing (docs/design.md §5)."""
    power = snapshot.block.value("W")
    if power is None:
        raise InvalidResponse("meter W not implemented")
    return power * import_sign


class SunSpecMeter:
    """One meter: discovers its models once, rediscovers after the map stops matching, then reads them."""

    def __init__(self, *, bus: ModbusBus, address: DeviceAddress) -> None:
        self._address = address
        self._bus = bus
        self._map: SunSpecMap | None = None

    @property
    def address(self) -> DeviceAddress:
        return self._address

    async def discover(self, *, priority: Priority = Priority.POLL) -> MeterIdentity:
        found = await discover(self._bus, self._address, priority=priority)
        model = serial_number = ""
        location = found.find(COMMON.model_id)
        if location is not None:
            common = await read_model(self._bus, self._address, location, priority=priority)
            model, serial_number = common.text("Md"), common.text("SN")
        self._map = found
        return MeterIdentity(model=model, serial_number=serial_number, sunspec=found)

    async def read_snapshot(self, *, priority: Priority = Priority.POLL) -> MeterSnapshot:
        if self._map is None:
            await self.discover(priority=priority)
        assert self._map is not None
        sunspec = self._map
        location = sunspec.find(METER_WYE.model_id) or sunspec.find(DER_AC_MEASUREMENT.model_id)
        if location is None:
            raise InvalidResponse(f"{self._address}: no meter model (203 or 701)")
        try:
            block = await read_model(self._bus, self._address, location, priority=priority)
        except InvalidResponse:
            # The register map moved (firmware update, another device on the address): rediscover next time.
            self._map = None
            raise
        return MeterSnapshot(sunspec=sunspec, block=block)
