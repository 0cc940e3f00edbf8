"""BatterySimulator over real Modbus TCP on loopback: registers, physics, limits and the revert timer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gridloop_simulators import battery as battery_module
from gridloop_simulators.battery import BatterySimulator

UNIT = 1


@pytest.fixture
async def simulator() -> AsyncIterator[BatterySimulator]:
    async with BatterySimulator(
        port=0, capacity_wh=10_000, max_power_w=5_000, initial_soc_pct=50, realtime=False
    ) as running:
        yield running


@pytest.fixture
async def client(simulator: BatterySimulator) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = AsyncModbusTcpClient("127.0.0.1", port=simulator.port, timeout=2, retries=0, reconnect_delay=0)
    assert await modbus.connect()
    yield modbus
    modbus.close()


def _address(simulator: BatterySimulator, model_id: int, name: str) -> int:
    return simulator.image.address_of(model_id, name)


async def _write(client: AsyncModbusTcpClient, simulator: BatterySimulator, name: str, *values: int) -> None:
    response = await client.write_registers(_address(simulator, 124, name), list(values), device_id=UNIT)
    assert not response.isError(), response


async def _read(client: AsyncModbusTcpClient, simulator: BatterySimulator, model_id: int, name: str) -> int:
    response = await client.read_holding_registers(_address(simulator, model_id, name), count=1, device_id=UNIT)
    assert not response.isError(), response
    return int(response.registers[0])


async def _control(
    client: AsyncModbusTcpClient,
    simulator: BatterySimulator,
    *,
    mode: int,
    out_pct: float = 0,
    in_pct: float = 0,
    revert_s: int = 0,
    grid: int = 1,
) -> None:
    # OutWRte, InWRte, WinTms, RvrtTms, RmpTms, ChaGriSet are contiguous; InOutWRte_SF is -2.
    await _write(
        client,
        simulator,
        "OutWRte",
        round(out_pct * 100) & 0xFFFF,
        round(in_pct * 100) & 0xFFFF,
        0,
        revert_s,
        0,
        grid,
    )
    await _write(client, simulator, "StorCtl_Mod", mode)


async def test_serves_the_sunspec_marker_at_40000(client: AsyncModbusTcpClient) -> None:
    response = await client.read_holding_registers(40000, count=4, device_id=UNIT)
    assert response.registers == [0x5375, 0x6E53, 1, 66]


async def test_idle_battery_applies_no_power(simulator: BatterySimulator) -> None:
    simulator.step(600)
    assert simulator.applied_power_w == 0
    assert simulator.soc_pct == pytest.approx(50)


async def test_discharge_draws_energy_through_the_efficiency(
    simulator: BatterySimulator, client: AsyncModbusTcpClient
) -> None:
    await _control(client, simulator, mode=2, out_pct=60)
    simulator.step(3600)
    # 60 % of 5 kW for an hour, drawn from the cells at 95 % efficiency.
    expected_pct = 50 - 3000 / 0.95 / 10_000 * 100
    assert simulator.soc_pct == pytest.approx(expected_pct)
    assert simulator.applied_power_w == pytest.approx(-3000)
    assert simulator.value(701, "W") == pytest.approx(-3000)
    assert simulator.value(124, "ChaState") == pytest.approx(round(expected_pct, 1))
    assert await _read(client, simulator, 124, "ChaSt") == 3  # DISCHARGING


async def test_charge_stores_energy_and_reports_positive_power(
    simulator: BatterySimulator, client: AsyncModbusTcpClient
) -> None:
    await _control(client, simulator, mode=1, in_pct=50)
    simulator.step(1800)
    assert simulator.soc_pct == pytest.approx(50 + 2500 * 0.5 * 0.95 / 10_000 * 100)
    assert simulator.value(701, "W") == pytest.approx(2500)
    assert simulator.value(802, "W") == pytest.approx(2500)


async def test_charging_stops_at_full(simulator: BatterySimulator, client: AsyncModbusTcpClient) -> None:
    await _control(client, simulator, mode=1, in_pct=100)
    simulator.step(4 * 3600)
    assert simulator.soc_pct == pytest.approx(100)
    assert simulator.applied_power_w == 0
    assert await _read(client, simulator, 124, "ChaSt") == 5  # FULL


async def test_discharge_stops_at_the_reserve(simulator: BatterySimulator, client: AsyncModbusTcpClient) -> None:
    await _write(client, simulator, "MinRsvPct", 450)  # 45.0 %
    await _control(client, simulator, mode=2, out_pct=100)
    simulator.step(3600)
    assert simulator.soc_pct == pytest.approx(45)
    assert simulator.applied_power_w == 0


async def test_rates_never_exceed_wchamax(simulator: BatterySimulator, client: AsyncModbusTcpClient) -> None:
    await _write(client, simulator, "WChaMax", 2000)
    await _control(client, simulator, mode=2, out_pct=100)
    simulator.step(1)
    assert simulator.applied_power_w == pytest.approx(-2000)


async def test_pv_only_charging_takes_nothing_from_the_grid(
    simulator: BatterySimulator, client: AsyncModbusTcpClient
) -> None:
    await _control(client, simulator, mode=1, in_pct=100, grid=0)
    simulator.step(600)
    assert simulator.applied_power_w == 0
    assert simulator.soc_pct == pytest.approx(50)


async def test_both_bits_with_zero_rates_hold(simulator: BatterySimulator, client: AsyncModbusTcpClient) -> None:
    await _control(client, simulator, mode=3)
    simulator.step(600)
    assert simulator.applied_power_w == 0
    assert await _read(client, simulator, 124, "ChaSt") == 6  # HOLDING


async def test_revert_timer_expiry_releases_control(simulator: BatterySimulator, client: AsyncModbusTcpClient) -> None:
    await _control(client, simulator, mode=2, out_pct=50, revert_s=30)
    simulator.step(29)
    assert simulator.applied_power_w == pytest.approx(-2500)
    assert simulator.reverted_count == 0
    simulator.step(2)
    assert simulator.reverted_count == 1
    assert simulator.applied_power_w == 0
    assert await _read(client, simulator, 124, "StorCtl_Mod") == 0
    assert await _read(client, simulator, 124, "OutWRte") == 0
    assert await _read(client, simulator, 802, "LocRemCtl") == 1  # LOCAL


async def test_a_control_write_restarts_the_revert_timer(
    simulator: BatterySimulator, client: AsyncModbusTcpClient
) -> None:
    await _control(client, simulator, mode=2, out_pct=50, revert_s=30)
    for _ in range(5):
        simulator.step(20)
        await _write(client, simulator, "InOutWRte_RvrtTms", 30)
    assert simulator.reverted_count == 0
    assert simulator.applied_power_w == pytest.approx(-2500)
    assert simulator.revert_remaining_s == pytest.approx(30)


async def test_out_of_range_writes_are_refused(simulator: BatterySimulator, client: AsyncModbusTcpClient) -> None:
    too_fast = await client.write_registers(_address(simulator, 124, "InWRte"), [15000], device_id=UNIT)
    assert too_fast.isError() and too_fast.exception_code == 3  # 150 %: illegal data value
    too_big = await client.write_registers(_address(simulator, 124, "WChaMax"), [9000], device_id=UNIT)
    assert too_big.isError() and too_big.exception_code == 3
    read_only = await client.write_registers(_address(simulator, 124, "ChaState"), [500], device_id=UNIT)
    assert read_only.isError() and read_only.exception_code == 2  # read-only: illegal data address
    assert simulator.value(124, "InWRte") == 0


async def test_heartbeat_counts_seconds(simulator: BatterySimulator, client: AsyncModbusTcpClient) -> None:
    simulator.step(7)
    assert await _read(client, simulator, 802, "Hb") == 7


async def test_reads_of_unknown_addresses_are_rejected(client: AsyncModbusTcpClient) -> None:
    response = await client.read_holding_registers(0, count=2, device_id=UNIT)
    assert response.isError() and response.exception_code == 2


async def test_main_serves_until_cancelled() -> None:
    task = asyncio.create_task(battery_module.main(["--port", "0", "--soc", "80", "--tick", "0.05"]))
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
