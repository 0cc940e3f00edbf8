"""SunSpecBattery against a real BatterySimulator on loopback: discovery, snapshots and safe control."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from device_agent.drivers.sunspec_battery import SunSpecBattery
from device_agent.intent import ControlIntent, ControlMode, DeviceLimits, IntentExpired
from device_agent.modbus import (
    DeviceAddress,
    DeviceUnavailable,
    DiscoveryError,
    ModbusBus,
    ReadbackMismatch,
    RequestRejected,
)
from device_agent.profiles.sunspec import METER_WYE, discover, read_model
from gridloop_common.contracts import DeviceMetadata
from gridloop_common.testing import FakeClock, run_on_fake_time
from gridloop_simulators.battery import BatterySimulator
from gridloop_simulators.meter import MeterSimulator

CAPACITY_WH = 10_000.0
MAX_POWER_W = 5_000.0
EFFICIENCY = 0.95


@pytest.fixture
async def simulator() -> AsyncIterator[BatterySimulator]:
    async with BatterySimulator(
        port=0,
        capacity_wh=CAPACITY_WH,
        max_power_w=MAX_POWER_W,
        initial_soc_pct=60,
        efficiency=EFFICIENCY,
        realtime=False,
    ) as running:
        yield running


@pytest.fixture
async def bus() -> AsyncIterator[ModbusBus]:
    async with ModbusBus(timeout_s=1.0) as opened:
        yield opened


def _battery(bus: ModbusBus, simulator: BatterySimulator, *, revert_timeout_s: int = 300) -> SunSpecBattery:
    return SunSpecBattery(
        bus=bus, address=DeviceAddress("127.0.0.1", simulator.port, 1), revert_timeout_s=revert_timeout_s
    )


async def test_discovery_finds_the_battery_models(bus: ModbusBus, simulator: BatterySimulator) -> None:
    identity = await _battery(bus, simulator).discover()
    assert identity.manufacturer == "gridloop"
    assert identity.serial_number == "SIM-BAT-0001"
    models = identity.sunspec.models
    assert list(models) == [1, 124, 802, 701]
    assert identity.sunspec.base_address == 40000
    assert models[1] == 40002
    assert models[124] == simulator.image.model_address(124)
    assert models[802] == simulator.image.model_address(802)
    assert models[701] == simulator.image.model_address(701)


@pytest.mark.parametrize("base_address", [0, 50000])
async def test_discovery_falls_back_to_the_other_base_addresses(bus: ModbusBus, base_address: int) -> None:
    async with BatterySimulator(port=0, base_address=base_address, realtime=False) as simulator:
        found = await discover(bus, DeviceAddress("127.0.0.1", simulator.port, 1))
    assert found.base_address == base_address
    assert set(found.models) == {1, 124, 802, 701}


async def test_discovery_without_a_marker_is_a_discovery_error(bus: ModbusBus) -> None:
    async with BatterySimulator(port=0, base_address=30000, realtime=False) as simulator:
        with pytest.raises(DiscoveryError, match="no 'SunS' marker"):
            await _battery(bus, simulator).discover()


async def test_a_meter_is_not_a_controllable_battery(bus: ModbusBus) -> None:
    async with MeterSimulator(port=0, realtime=False) as meter:
        battery = SunSpecBattery(bus=bus, address=DeviceAddress("127.0.0.1", meter.port, 1))
        with pytest.raises(DiscoveryError, match="no SunSpec model 124"):
            await battery.discover()


async def test_snapshot_reads_state_in_gridloop_units(bus: ModbusBus, simulator: BatterySimulator) -> None:
    snapshot = await _battery(bus, simulator).read_snapshot()
    assert snapshot.soc_pct == pytest.approx(60)
    assert snapshot.soh_pct == pytest.approx(98)
    assert snapshot.capacity_wh == CAPACITY_WH
    assert snapshot.max_charge_w == MAX_POWER_W
    assert snapshot.reserve_pct == pytest.approx(10)
    assert snapshot.power_w == 0
    assert not snapshot.externally_controlled
    assert snapshot.grid_charging_allowed is True
    assert snapshot.charge_status == "HOLDING"
    assert snapshot.revert_remaining_s is None


async def test_discharge_is_written_read_back_and_drains_the_battery(
    bus: ModbusBus, simulator: BatterySimulator
) -> None:
    battery = _battery(bus, simulator)
    plan = await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=3000))
    assert plan.power_w == pytest.approx(-3000)
    assert simulator.value(124, "OutWRte") == pytest.approx(60)
    assert simulator.raw(124, "StorCtl_Mod") == 2
    assert simulator.raw(124, "InOutWRte_RvrtTms") == 300

    simulator.step(60)
    expected_drop_pct = 3000 * 60 / 3600 / EFFICIENCY / CAPACITY_WH * 100
    assert simulator.soc_pct == pytest.approx(60 - expected_drop_pct)
    snapshot = await battery.read_snapshot()
    assert snapshot.power_w == pytest.approx(-3000)
    assert snapshot.discharge_enabled and not snapshot.charge_enabled
    assert snapshot.charge_status == "DISCHARGING"
    assert snapshot.soc_pct == pytest.approx(60 - expected_drop_pct, abs=0.05)
    assert snapshot.revert_timeout_s == 300
    assert snapshot.revert_remaining_s is not None and 0 < snapshot.revert_remaining_s <= 300


async def test_setpoints_beyond_the_limits_are_clamped(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    plan = await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=8000))
    assert plan.clamped
    simulator.step(1)
    assert simulator.applied_power_w == pytest.approx(-MAX_POWER_W)

    registry = DeviceLimits.from_metadata(DeviceMetadata(max_power_kw=4))
    plan = await battery.apply(ControlIntent(ControlMode.CHARGE, setpoint_w=4500), registry)
    assert [clamp.applied for clamp in plan.clamps] == [4000]
    simulator.step(1)
    assert simulator.applied_power_w == pytest.approx(4000)


async def test_the_reserve_stops_discharge(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=5000, backup_reserve_pct=58))
    assert simulator.value(124, "MinRsvPct") == pytest.approx(58)
    simulator.step(600)
    assert simulator.soc_pct == pytest.approx(58)
    assert simulator.applied_power_w == 0
    # The same command asking again at the reserve plans no discharge at all, and says why.
    plan = await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=5000, backup_reserve_pct=58))
    assert plan.power_w == 0
    assert "reserve" in plan.clamps[0].reason


async def test_standby_holds_zero(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    await battery.apply(ControlIntent(ControlMode.CHARGE, setpoint_w=2000))
    await battery.apply(ControlIntent(ControlMode.STANDBY))
    simulator.step(200)
    assert simulator.applied_power_w == 0
    assert simulator.soc_pct == pytest.approx(60)
    snapshot = await battery.read_snapshot()
    assert snapshot.externally_controlled and snapshot.charge_status == "HOLDING"


async def test_self_consumption_releases_control(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=2000))
    plan = await battery.apply(ControlIntent(ControlMode.SELF_CONSUMPTION))
    assert plan.revert_timeout_s == 0
    snapshot = await battery.read_snapshot()
    assert not snapshot.externally_controlled
    assert snapshot.revert_timeout_s == 0
    simulator.step(60)
    assert simulator.applied_power_w == 0
    assert not await battery.refresh_revert_timer()  # nothing to keep alive


async def test_a_command_reserve_is_undone_when_released(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    assert simulator.value(124, "MinRsvPct") == pytest.approx(10)
    await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=2000, backup_reserve_pct=50))
    assert simulator.value(124, "MinRsvPct") == pytest.approx(50)
    await battery.apply(ControlIntent(ControlMode.SELF_CONSUMPTION))
    assert simulator.value(124, "MinRsvPct") == pytest.approx(10)
    assert not (await battery.read_snapshot()).externally_controlled


async def test_the_registry_default_reserve_is_written_back_after_a_restart(
    bus: ModbusBus, simulator: BatterySimulator
) -> None:
    limits = DeviceLimits(default_reserve_pct=15)
    await _battery(bus, simulator).apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=2000, backup_reserve_pct=50))
    restarted = _battery(bus, simulator)  # a new agent process: it never saw the device's reserve before 50
    await restarted.apply(ControlIntent(ControlMode.SELF_CONSUMPTION), limits)
    assert simulator.value(124, "MinRsvPct") == pytest.approx(15)


async def test_backup_charges_to_full_and_holds(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator, revert_timeout_s=3600)
    await battery.apply(ControlIntent(ControlMode.BACKUP))
    simulator.step(1)
    assert simulator.applied_power_w == pytest.approx(MAX_POWER_W)
    simulator.step(3 * 3600)
    assert simulator.soc_pct == pytest.approx(100)
    assert simulator.applied_power_w == 0


async def test_without_refresh_the_battery_reverts_by_itself(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator, revert_timeout_s=30)
    await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=2000))
    simulator.step(29)
    assert simulator.reverted_count == 0
    assert simulator.applied_power_w == pytest.approx(-2000)
    simulator.step(2)  # the agent "died": no refresh
    assert simulator.reverted_count == 1
    assert simulator.applied_power_w == 0
    snapshot = await battery.read_snapshot()
    assert not snapshot.externally_controlled
    assert snapshot.discharge_rate_pct == 0


async def test_refreshing_the_timer_keeps_control(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator, revert_timeout_s=30)
    await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=2000))
    for _ in range(6):
        simulator.step(10)  # refresh well inside the timer (at a third of it)
        assert await battery.refresh_revert_timer()
    simulator.step(25)
    assert simulator.reverted_count == 0
    assert simulator.applied_power_w == pytest.approx(-2000)


async def test_the_timer_is_not_refreshed_past_the_intent_end(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator, revert_timeout_s=300)
    start = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    intent = ControlIntent(ControlMode.DISCHARGE, setpoint_w=1000, valid_until=start + timedelta(seconds=45))
    plan = await battery.apply(intent, now=start)
    assert plan.revert_timeout_s == 45
    assert simulator.raw(124, "InOutWRte_RvrtTms") == 45
    assert await battery.refresh_revert_timer(now=start + timedelta(seconds=30))
    assert simulator.raw(124, "InOutWRte_RvrtTms") == 15
    assert not await battery.refresh_revert_timer(now=start + timedelta(seconds=45))


async def test_expired_intents_write_nothing(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    start = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    with pytest.raises(IntentExpired):
        await battery.apply(
            ControlIntent(ControlMode.DISCHARGE, setpoint_w=1000, valid_until=start), now=start + timedelta(seconds=1)
        )
    assert simulator.raw(124, "StorCtl_Mod") == 0
    assert simulator.raw(124, "InOutWRte_RvrtTms") == 0


async def test_grid_import_disabled_means_no_grid_charging(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    await battery.apply(ControlIntent(ControlMode.CHARGE, setpoint_w=3000, enable_grid_import=False))
    assert simulator.raw(124, "ChaGriSet") == 0
    simulator.step(60)
    assert simulator.applied_power_w == 0
    assert (await battery.read_snapshot()).grid_charging_allowed is False
    await battery.apply(ControlIntent(ControlMode.CHARGE, setpoint_w=3000, enable_grid_import=True))
    simulator.step(60)
    assert simulator.applied_power_w == pytest.approx(3000)


class CappingBattery(BatterySimulator):
    """A device that silently caps the revert timer at 20 s instead of refusing the write."""

    def _after_write(self, address: int, count: int) -> None:
        if self.image.get_int(124, "InOutWRte_RvrtTms") > 20:
            self.image.set(124, "InOutWRte_RvrtTms", 20)
        super()._after_write(address, count)


async def test_a_value_the_device_did_not_take_is_a_readback_mismatch(bus: ModbusBus) -> None:
    async with CappingBattery(port=0, realtime=False) as simulator:
        battery = _battery(bus, simulator, revert_timeout_s=60)
        with pytest.raises(ReadbackMismatch, match="InOutWRte_RvrtTms") as mismatch:
            await battery.apply(ControlIntent(ControlMode.DISCHARGE, setpoint_w=1000))
        assert (mismatch.value.written, mismatch.value.read_back) == (60, 20)
        # The mode, written after the block that failed, never enabled the discharge.
        assert simulator.raw(124, "StorCtl_Mod") == 0


async def test_a_refused_write_is_request_rejected(bus: ModbusBus, simulator: BatterySimulator) -> None:
    battery = _battery(bus, simulator)
    await battery.discover()
    address = DeviceAddress("127.0.0.1", simulator.port, 1)
    with pytest.raises(RequestRejected):
        await bus.write_registers(address, simulator.image.address_of(124, "WChaMax"), [60000])


async def test_follow_load_covers_the_site_without_exporting(bus: ModbusBus, simulator: BatterySimulator) -> None:
    async with MeterSimulator(
        port=0, battery=simulator, start_s_of_day=18 * 3600, variation=0, realtime=False
    ) as meter:
        meter_address = DeviceAddress("127.0.0.1", meter.port, 1)
        meter_map = await discover(bus, meter_address)
        battery = _battery(bus, simulator)
        site_w = 0.0
        for _ in range(3):  # the 1 s closed loop: measure, plan, write, let a second pass
            block = await read_model(bus, meter_address, meter_map.require(METER_WYE.model_id))
            site_w = block.value("W") or 0.0
            await battery.apply(ControlIntent(ControlMode.FOLLOW_LOAD, site_power_w=site_w))
            simulator.step(1)
            meter.step(1)
        assert 0 <= meter.site_power_w < 10  # covered to the rate resolution, never exporting
        assert simulator.applied_power_w == pytest.approx(-meter.load_w, abs=10)


def test_a_dead_device_is_unavailable_quickly() -> None:
    # The loop's time stands still: the refusal must come from the closed port, not from a timeout.
    async def scenario(clock: FakeClock) -> None:
        async with BatterySimulator(port=0, realtime=False) as simulator:
            port = simulator.port
        async with ModbusBus(timeout_s=1.0, clock=clock) as bus:
            battery = SunSpecBattery(bus=bus, address=DeviceAddress("127.0.0.1", port, 1), clock=clock)
            with pytest.raises(DeviceUnavailable):
                await battery.apply(ControlIntent(ControlMode.STANDBY))

    run_on_fake_time(scenario)
