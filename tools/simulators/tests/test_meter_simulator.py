"""MeterSimulator: the daily load profile, the coupled battery and model 203 over Modbus TCP."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gridloop_simulators.battery import BatterySimulator
from gridloop_simulators.meter import DEFAULT_PROFILE_KW, MeterSimulator, load_w_at


def test_profile_follows_the_hourly_values_without_variation() -> None:
    assert load_w_at(0, variation=0) == pytest.approx(DEFAULT_PROFILE_KW[0] * 1000)
    assert load_w_at(19 * 3600, variation=0) == pytest.approx(DEFAULT_PROFILE_KW[19] * 1000)
    halfway = (DEFAULT_PROFILE_KW[7] + DEFAULT_PROFILE_KW[8]) / 2 * 1000
    assert load_w_at(7.5 * 3600, variation=0) == pytest.approx(halfway)


def test_variation_is_small_and_deterministic() -> None:
    times = [12 * 3600 + second for second in range(0, 600, 7)]
    samples = [load_w_at(moment) for moment in times]
    assert samples == [load_w_at(moment) for moment in times]
    for moment, sample in zip(times, samples, strict=True):
        base = load_w_at(moment, variation=0)
        assert abs(sample - base) <= 0.05 * base + 1e-9
    assert max(samples) - min(samples) > 10  # it does vary


def test_evening_peak_is_above_night_base_load() -> None:
    assert load_w_at(19 * 3600) > 3 * load_w_at(3 * 3600)


async def test_meter_serves_site_power_and_energy_over_modbus() -> None:
    async with MeterSimulator(port=0, start_s_of_day=18 * 3600, variation=0, realtime=False) as meter:
        client = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=2, retries=0, reconnect_delay=0)
        assert await client.connect()
        try:
            marker = await client.read_holding_registers(40000, count=2, device_id=1)
            assert marker.registers == [0x5375, 0x6E53]
            address = meter.image.address_of(203, "W")
            response = await client.read_holding_registers(address, count=1, device_id=1)
            assert response.registers[0] == round(DEFAULT_PROFILE_KW[18] * 1000)
            meter.step(3600)
        finally:
            client.close()
    # An hour from 18:00 to 19:00 ramps from 2.4 kW to 2.8 kW: about 2.6 kWh imported.
    assert meter.imported_wh == pytest.approx(2600, rel=0.01)
    assert meter.value("TotWhImp") == pytest.approx(meter.imported_wh, abs=1)


async def test_coupled_battery_adds_to_the_site_power() -> None:
    async with BatterySimulator(port=0, realtime=False) as battery:
        meter = MeterSimulator(port=0, battery=battery, start_s_of_day=12 * 3600, variation=0, realtime=False)
        battery.applied_power_w = -500.0  # discharging 500 W covers part of the load
        assert meter.site_power_w == pytest.approx(DEFAULT_PROFILE_KW[12] * 1000 - 500)
        assert meter.value("W") == pytest.approx(DEFAULT_PROFILE_KW[12] * 1000 - 500)
        battery.applied_power_w = -2000.0  # more than the load: the site exports
        assert meter.value("W") == pytest.approx(DEFAULT_PROFILE_KW[12] * 1000 - 2000)
        meter.step(3600)
        # The load falls from 0.9 kW to 0.8 kW over the hour: 2 kW - 0.85 kW average is exported.
        assert meter.exported_wh == pytest.approx(1150, abs=1)
